"""Allele tokens: the byte a haplotype allele is stored as, shared by the data layer and the model."""
import numpy as np

from embrag_ext.panel import haplotype_columns
from embrag_ext.tokens import ALT, MASK, REF, VOCAB_SIZE


def test_alleles_are_their_vcf_allele_index_and_mask_is_the_last_token():
    assert (REF, ALT) == (0, 1)            # a biallelic GT allele index is its token as it is
    assert MASK == 2 and VOCAB_SIZE == 3   # the embedding table has one row per token


def test_haplotype_columns_of_a_sample_are_adjacent():
    assert haplotype_columns(np.array([0, 3])).tolist() == [0, 1, 6, 7]
    assert haplotype_columns(np.array([], dtype=np.int64)).tolist() == []

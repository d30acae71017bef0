"""Allele tokens shared by the data layer and the model.

A haplotype allele is stored as one byte: REF, ALT, or MASK (the allele is not
observed: an untyped site or a missing genotype).
"""
REF = 0
ALT = 1
MASK = 2
VOCAB_SIZE = 3

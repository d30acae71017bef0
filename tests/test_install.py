"""What `pip install .` asks for: the FAISS distribution (tools/faiss_requirement.py)."""
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from faiss_requirement import faiss_requirement  # noqa: E402


def test_a_gpu_faiss_already_installed_is_required_instead_of_faiss_cpu():
    assert faiss_requirement(lambda name: False) == "faiss-cpu"
    assert faiss_requirement(lambda name: name == "faiss-gpu-cu12") == "faiss-gpu-cu12"
    assert faiss_requirement(lambda name: name in ("faiss-gpu", "faiss-cpu")) == "faiss-gpu"


def test_the_installed_package_requires_the_faiss_that_provides_the_module():
    """Here: the distribution that installed the module `faiss` (faiss-cpu, or a GPU build)
    is the one the build chose and the one the installed embrag_ext requires."""
    providers = metadata.packages_distributions()["faiss"]
    assert faiss_requirement() in providers
    required = [r.split(";")[0].strip() for r in metadata.requires("embrag_ext")]
    assert faiss_requirement() in required

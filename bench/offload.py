"""The offload step of issue #12: ``python -m fusedadam bench offload``, from a checkout.

    python bench/offload.py --models bert-base,gpt2-medium --repeats 7 \
        --json bench/results/offload.json

The benchmark itself ships in the package (``fusedadam.benchmarks.offload``; its docstring
lists the modes and their bytes per element) so that an installed wheel runs it too.
"""

from fusedadam.benchmarks import offload

if __name__ == "__main__":
    offload.main()

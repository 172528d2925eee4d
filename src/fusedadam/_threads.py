"""The effective thread count of a step: the compiled module's rule, or 1 without it."""

from fusedadam._backend import _kernels
from fusedadam._validation import check_num_threads


def effective_num_threads(num_threads):
    """Map ``num_threads`` to the positive int a step uses now.

    None: OpenMP's default team size right now, which follows ``OMP_NUM_THREADS``,
    ``omp_set_num_threads`` and ``threadpoolctl.threadpool_limits``. -1: every processor
    OpenMP sees. A positive int is used as is, up to ``_kernels.MAX_NUM_THREADS``. Always 1
    without OpenMP, and in a child forked after a parallel step (GNU libgomp's pool does not
    survive fork()). The rule itself is ``_kernels.effective_num_threads``.
    """
    check_num_threads(num_threads)
    if _kernels is None:
        return 1
    return _kernels.effective_num_threads(num_threads)

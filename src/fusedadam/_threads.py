"""The effective thread count of a step, resolved once in Python before any prange."""
from fusedadam._validation import check_num_threads

try:
    from fusedadam import _kernels
except ImportError:  # the extension was not built
    _kernels = None


def effective_num_threads(num_threads):
    """Map ``num_threads`` to a positive int.

    None: OpenMP's default team size right now, which follows ``OMP_NUM_THREADS``,
    ``omp_set_num_threads`` and ``threadpoolctl.threadpool_limits``. -1: every processor
    OpenMP sees. A positive int is used as is. Always 1 without OpenMP, and in a child
    forked after a parallel step (GNU libgomp's pool does not survive fork()).
    """
    check_num_threads(num_threads)
    if _kernels is None or not _kernels.openmp_enabled() or _kernels.forked_child():
        return 1
    if num_threads is None:
        return max(1, _kernels.max_threads())
    if num_threads == -1:
        return max(1, _kernels.num_procs())
    return int(num_threads)

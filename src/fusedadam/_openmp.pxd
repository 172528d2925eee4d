cdef extern from "_openmp.h" nogil:
    int FA_OPENMP_ENABLED
    int fa_max_threads()
    int fa_num_procs()

/* plugin.h — the entry points that PyTorch's CUDAPluggableAllocator loads.
 *
 * torch.cuda.memory.CUDAPluggableAllocator(path, "memfit_malloc", "memfit_free")
 * calls these through function pointers typed void*(size_t, int, cudaStream_t)
 * and void(void*, size_t, int, cudaStream_t); cudaStream_t is a pointer, passed
 * here as void* so that no CUDA header is needed to use this file. PyTorch does
 * not check the pointer it gets back, so memfit_malloc never returns NULL: a
 * size of 0 gets a unique pointer and an OOM throws std::runtime_error("CUDA out
 * of memory. ..."), which PyTorch raises in Python. The allocator behind them is
 * created on first use over the cuda backend, configured from MEMFIT_CONF.
 */
#ifndef MEMFIT_PLUGIN_H
#define MEMFIT_PLUGIN_H

#include <stddef.h>

#include "memfit/memfit.h"

#ifdef __cplusplus
extern "C" {
#endif

MF_API void *memfit_malloc(size_t size, int device, void *stream);
MF_API void memfit_free(void *ptr, size_t size, int device, void *stream);
/* For alloc._allocator.set_reset_fn: torch.cuda.empty_cache(). */
MF_API void memfit_empty_cache(void);
/* For alloc._allocator.set_record_stream_fn: Tensor.record_stream(). */
MF_API void memfit_record_stream(void *ptr, void *stream);
/* For alloc._allocator.set_memory_fraction_fn: capacity = fraction x total. */
MF_API void memfit_set_memory_fraction(double fraction, int device);
/* The allocator behind the entry points (created on first call; NULL and
 * mf_last_error() if it cannot be created). For stats from Python. */
MF_API mf_allocator *memfit_plugin_allocator(void);

#ifdef __cplusplus
}
#endif
#endif /* MEMFIT_PLUGIN_H */

/* plugin.h — the entry points that PyTorch's CUDAPluggableAllocator loads.
 *
 * torch.cuda.memory.CUDAPluggableAllocator(path, "memfit_malloc", "memfit_free")
 * calls these through function pointers typed void*(size_t, int, cudaStream_t)
 * and void(void*, size_t, int, cudaStream_t); cudaStream_t is a pointer, passed
 * here as void* so that no CUDA header is needed to use this file. PyTorch does
 * not check the pointer it gets back, so memfit_malloc never returns NULL: a
 * size of 0 gets a unique pointer and an OOM throws ("CUDA out of memory. ...":
 * c10::OutOfMemoryError through the thrower below, else std::runtime_error),
 * which PyTorch raises in Python. The allocator behind them is created at the
 * first allocation over the cuda backend, configured from MEMFIT_CONF and
 * memfit_plugin_configure.
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
 * memfit_plugin_last_error() if it cannot be created). For stats from Python. */
MF_API mf_allocator *memfit_plugin_allocator(void);
/* The allocator if an entry point has created it, else NULL; creates nothing
 * (so it initializes no CUDA). */
MF_API mf_allocator *memfit_plugin_allocator_if_created(void);
/* Check, without creating the allocator or initializing CUDA, that it can be
 * created: the options (backend:cuda, then MEMFIT_CONF, then
 * memfit_plugin_configure's) parse, and for the cuda
 * backend the driver library loads and has every entry point memfit needs.
 * 0 if so, else nonzero with the reason in memfit_plugin_last_error(). Call it
 * before handing PyTorch the entry points: after the swap, a failure would make
 * every CUDA allocation of the process throw. */
MF_API int memfit_plugin_validate(void);
/* Options for the allocator, read after MEMFIT_CONF's when the first CUDA
 * allocation creates it (memfit.install(device="cuda", capacity=...) calls
 * this instead of editing the process's environment). Replaces the options of
 * an earlier call; NULL or "" clears them. 0 if they parse and the allocator
 * does not exist yet, else nonzero with the reason in
 * memfit_plugin_last_error() and the earlier options kept. */
MF_API int memfit_plugin_configure(const char *conf);
/* One option of the plugin's allocator as text (as mf_options_get writes it:
 * sizes in bytes), from the allocator once created, else from the options it
 * will be created with; creates nothing. 0 on success, else nonzero with the
 * reason in memfit_plugin_last_error(). */
MF_API int memfit_plugin_option(const char *key, char *buf, size_t len);
/* The calling thread's message from the last failed memfit_plugin_validate,
 * memfit_plugin_configure, memfit_plugin_option or memfit_plugin_allocator
 * ("" if none). */
MF_API const char *memfit_plugin_last_error(void);
/* A function that throws the running PyTorch's c10::OutOfMemoryError with the
 * message (libmemfit_torch.so's memfit_torch_throw_oom). Once set, an OOM in
 * memfit_malloc goes through it, so Python sees torch.OutOfMemoryError and
 * cuDNN's workspace fallback (which catches only that type) works; without it
 * an OOM is a std::runtime_error("CUDA out of memory. ..."). NULL unsets. */
typedef void (*memfit_oom_thrower)(const char *message);
MF_API void memfit_plugin_set_oom_thrower(memfit_oom_thrower thrower);

#ifdef __cplusplus
}
#endif
#endif /* MEMFIT_PLUGIN_H */

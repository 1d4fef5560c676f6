/* memfit/torch.h — the C API of libmemfit_torch.so, which installs a memfit
 * allocator (host backend) as PyTorch's CPU allocator (c10::SetCPUAllocator),
 * so that every CPU tensor is served by memfit within a simulated budget. */
#ifndef MEMFIT_TORCH_H
#define MEMFIT_TORCH_H

/* Use:
 *
 *     mf_allocator *a;
 *     mf_allocator_create("backend:host,capacity:8GiB", &a);
 *     if (memfit_torch_cpu_install(a, 0) != 0)
 *         fprintf(stderr, "%s\n", memfit_torch_last_error());
 *     ... torch runs; an allocation over the budget raises torch.OutOfMemoryError
 *     memfit_torch_cpu_uninstall();       // new tensors: the previous allocator
 *
 * Tensors allocated through memfit keep freeing into their own allocator after
 * an uninstall or a second install, so `a` must outlive them (memfit
 * allocators are not destroyed while tensors live). install and uninstall
 * return 0 on success, or nonzero with a message in memfit_torch_last_error().
 */

#include "memfit/memfit.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MEMFIT_TORCH_BUILDING) && defined(__GNUC__)
#define MEMFIT_TORCH_API __attribute__((visibility("default")))
#else
#define MEMFIT_TORCH_API
#endif

/* Install an adapter over `a` (device `device` of it) as PyTorch's CPU
 * allocator, with priority 1 (the default allocator has 0), remembering the
 * allocator it replaces. `a` must hand out host memory: the `virtual` and
 * `cuda` backends are refused. Installing again while installed switches new
 * allocations to the new (a, device) and keeps the allocator remembered by
 * the first install. At most 64 distinct memfit allocators can have live
 * tensors at once. */
MEMFIT_TORCH_API int memfit_torch_cpu_install(mf_allocator *a, int device);

/* Restore the allocator that the first install replaced. Nonzero when not
 * installed, or when another allocator has replaced memfit's since (then
 * nothing is restored and memfit counts as uninstalled). */
MEMFIT_TORCH_API int memfit_torch_cpu_uninstall(void);

/* 1 while installed, else 0. */
MEMFIT_TORCH_API int memfit_torch_cpu_installed(void);

/* The calling thread's message for its last failed call ("" if none). */
MEMFIT_TORCH_API const char *memfit_torch_last_error(void);

/* The torch.__version__ this library was compiled against ("2.13.0+cpu"):
 * c10's C++ ABI changes between releases, so a caller must refuse to install
 * into any other running torch. */
MEMFIT_TORCH_API const char *memfit_torch_built_for(void);

/* Throw c10::OutOfMemoryError(message); never returns. For
 * memfit_plugin_set_oom_thrower (memfit/plugin.h): the CUDA plugin's OOMs then
 * reach Python as torch.OutOfMemoryError. */
MEMFIT_TORCH_API void memfit_torch_throw_oom(const char *message);

#ifdef __cplusplus
}
#endif
#endif /* MEMFIT_TORCH_H */

/* cuda_abi_check.c — holds memfit's own declarations of the CUDA driver ABI
 * (allocator/src/cuda_driver.h, which lets memfit build without a toolkit)
 * against a real toolkit's cuda.h: every constant and struct layout the cuda
 * backend passes to the driver. It is checked at compile time; the program
 * only runs so that ctest reports it. Built where CMake finds cuda.h. */
#include <cuda.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../allocator/src/cuda_driver.h"

#define SAME(ours, theirs) _Static_assert((long long)(ours) == (long long)(theirs), #ours " != " #theirs)
#define SAME_LAYOUT(ours, theirs, field_ours, field_theirs) \
  _Static_assert(offsetof(ours, field_ours) == offsetof(theirs, field_theirs), #ours "." #field_ours " moved")

SAME(MF_CU_SUCCESS, CUDA_SUCCESS);
SAME(MF_CU_ERROR_INVALID_VALUE, CUDA_ERROR_INVALID_VALUE);
SAME(MF_CU_ERROR_OUT_OF_MEMORY, CUDA_ERROR_OUT_OF_MEMORY);
SAME(MF_CU_ERROR_NOT_INITIALIZED, CUDA_ERROR_NOT_INITIALIZED);
SAME(MF_CU_ERROR_DEINITIALIZED, CUDA_ERROR_DEINITIALIZED);
SAME(MF_CU_ERROR_NO_DEVICE, CUDA_ERROR_NO_DEVICE);
SAME(MF_CU_ERROR_INVALID_CONTEXT, CUDA_ERROR_INVALID_CONTEXT);
SAME(MF_CU_ERROR_INVALID_HANDLE, CUDA_ERROR_INVALID_HANDLE);
SAME(MF_CU_ERROR_NOT_READY, CUDA_ERROR_NOT_READY);
SAME(MF_CU_ERROR_STREAM_CAPTURE_UNSUPPORTED, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
SAME(MF_CU_ERROR_STREAM_CAPTURE_INVALIDATED, CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
SAME(MF_CU_ERROR_STREAM_CAPTURE_IMPLICIT, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
SAME(MF_CU_ERROR_CAPTURED_EVENT, CUDA_ERROR_CAPTURED_EVENT);
SAME(MF_CU_STREAM_LEGACY, (uintptr_t)CU_STREAM_LEGACY);
SAME(MF_CU_STREAM_PER_THREAD, (uintptr_t)CU_STREAM_PER_THREAD);
SAME(MF_CU_EVENT_DISABLE_TIMING, CU_EVENT_DISABLE_TIMING);
SAME(MF_CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED);
SAME(MF_CU_STREAM_CAPTURE_STATUS_NONE, CU_STREAM_CAPTURE_STATUS_NONE);
SAME(MF_CU_STREAM_CAPTURE_STATUS_ACTIVE, CU_STREAM_CAPTURE_STATUS_ACTIVE);
SAME(MF_CU_STREAM_CAPTURE_STATUS_INVALIDATED, CU_STREAM_CAPTURE_STATUS_INVALIDATED);
SAME(MF_CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_ALLOCATION_TYPE_PINNED);
SAME(MF_CU_MEM_LOCATION_TYPE_DEVICE, CU_MEM_LOCATION_TYPE_DEVICE);
SAME(MF_CU_MEM_ACCESS_FLAGS_PROT_READWRITE, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
SAME(MF_CU_MEM_ALLOC_GRANULARITY_MINIMUM, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
SAME(MF_CU_MEM_ALLOC_GRANULARITY_RECOMMENDED, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);

SAME(sizeof(mf_cu_device), sizeof(CUdevice));
SAME(sizeof(mf_cu_deviceptr), sizeof(CUdeviceptr));
SAME(sizeof(mf_cu_mem_handle), sizeof(CUmemGenericAllocationHandle));
SAME(sizeof(mf_cu_result), sizeof(CUresult));
SAME(sizeof(mf_cu_mem_location), sizeof(CUmemLocation));
SAME_LAYOUT(mf_cu_mem_location, CUmemLocation, type, type);
SAME_LAYOUT(mf_cu_mem_location, CUmemLocation, id, id);
SAME(sizeof(mf_cu_mem_prop), sizeof(CUmemAllocationProp));
SAME_LAYOUT(mf_cu_mem_prop, CUmemAllocationProp, type, type);
SAME_LAYOUT(mf_cu_mem_prop, CUmemAllocationProp, requested_handle_types, requestedHandleTypes);
SAME_LAYOUT(mf_cu_mem_prop, CUmemAllocationProp, location, location);
SAME_LAYOUT(mf_cu_mem_prop, CUmemAllocationProp, win32_metadata, win32HandleMetaData);
SAME_LAYOUT(mf_cu_mem_prop, CUmemAllocationProp, alloc_flags, allocFlags);
SAME(sizeof(mf_cu_access_desc), sizeof(CUmemAccessDesc));
SAME_LAYOUT(mf_cu_access_desc, CUmemAccessDesc, location, location);
SAME_LAYOUT(mf_cu_access_desc, CUmemAccessDesc, flags, flags);


int main(void) {
  printf("memfit's CUDA driver declarations match cuda.h %d\n", CUDA_VERSION);
  return 0;
}

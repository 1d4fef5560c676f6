/* cuda_driver.h — the few CUDA driver API types, constants and entry-point
 * signatures that backend_cuda.c uses, declared here so that building memfit
 * needs no CUDA toolkit: the driver is dlopen'ed at run time, and these are
 * the ABI it is called through.
 *
 * Names are memfit's own (mf_cu*) so that a file may include this and cuda.h
 * together. Every value and layout is the driver's documented ABI, which is
 * stable across driver versions; tests/cuda_abi_check.c holds each one
 * against the toolkit's cuda.h where a toolkit is installed. */
#ifndef MEMFIT_CUDA_DRIVER_H
#define MEMFIT_CUDA_DRIVER_H

#include <stddef.h>

/* Handles. CUdevice is an int ordinal, the rest are opaque pointers, and a
 * device pointer or a generic allocation handle is an unsigned 64-bit value. */
typedef int mf_cu_result;
typedef int mf_cu_device;
typedef struct mf_cu_ctx_st *mf_cu_context;
typedef struct mf_cu_stream_st *mf_cu_stream;
typedef struct mf_cu_event_st *mf_cu_event;
typedef unsigned long long mf_cu_deviceptr;
typedef unsigned long long mf_cu_mem_handle;

/* Results (CUresult). */
enum {
  MF_CU_SUCCESS = 0,
  MF_CU_ERROR_INVALID_VALUE = 1,
  MF_CU_ERROR_OUT_OF_MEMORY = 2,
  MF_CU_ERROR_NOT_INITIALIZED = 3,
  MF_CU_ERROR_DEINITIALIZED = 4,
  MF_CU_ERROR_NO_DEVICE = 100,
  MF_CU_ERROR_INVALID_CONTEXT = 201,
  MF_CU_ERROR_INVALID_HANDLE = 400,
  MF_CU_ERROR_NOT_READY = 600,
  MF_CU_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
  MF_CU_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
  MF_CU_ERROR_STREAM_CAPTURE_IMPLICIT = 906,
  MF_CU_ERROR_CAPTURED_EVENT = 907
};

/* The special stream handles (CU_STREAM_LEGACY, CU_STREAM_PER_THREAD); 0 is
 * the legacy default stream too. */
#define MF_CU_STREAM_LEGACY ((uintptr_t)0x1)
#define MF_CU_STREAM_PER_THREAD ((uintptr_t)0x2)

enum { MF_CU_EVENT_DISABLE_TIMING = 0x2 };
enum { MF_CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102 };
/* CUstreamCaptureStatus */
enum { MF_CU_STREAM_CAPTURE_STATUS_NONE = 0, MF_CU_STREAM_CAPTURE_STATUS_ACTIVE = 1,
       MF_CU_STREAM_CAPTURE_STATUS_INVALIDATED = 2 };

/* Virtual memory management. */
enum { MF_CU_MEM_ALLOCATION_TYPE_PINNED = 0x1 };
enum { MF_CU_MEM_LOCATION_TYPE_DEVICE = 0x1 };
enum { MF_CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 0x3 };
enum { MF_CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0x0, MF_CU_MEM_ALLOC_GRANULARITY_RECOMMENDED = 0x1 };

typedef struct mf_cu_mem_location { /* CUmemLocation */
  int type;                         /* CUmemLocationType */
  int id;                           /* the device ordinal */
} mf_cu_mem_location;

typedef struct mf_cu_mem_prop { /* CUmemAllocationProp */
  int type;                     /* CUmemAllocationType */
  int requested_handle_types;   /* CUmemAllocationHandleType */
  mf_cu_mem_location location;
  void *win32_metadata;
  struct {
    unsigned char compression_type;
    unsigned char gpu_direct_rdma_capable;
    unsigned short usage;
    unsigned char reserved[4];
  } alloc_flags;
} mf_cu_mem_prop;

typedef struct mf_cu_access_desc { /* CUmemAccessDesc */
  mf_cu_mem_location location;
  int flags;                       /* CUmemAccess_flags */
} mf_cu_access_desc;

/* Entry points, each looked up by the versioned name that cuda.h maps it to
 * (cuMemAlloc -> cuMemAlloc_v2); the unversioned names are older ABIs. */
typedef mf_cu_result (*pfn_cuInit)(unsigned int);
typedef mf_cu_result (*pfn_cuDeviceGetCount)(int *);
typedef mf_cu_result (*pfn_cuDeviceGet)(mf_cu_device *, int);
typedef mf_cu_result (*pfn_cuDeviceTotalMem)(size_t *, mf_cu_device);
typedef mf_cu_result (*pfn_cuDevicePrimaryCtxRetain)(mf_cu_context *, mf_cu_device);
typedef mf_cu_result (*pfn_cuDevicePrimaryCtxRelease)(mf_cu_device);
typedef mf_cu_result (*pfn_cuCtxGetCurrent)(mf_cu_context *);
typedef mf_cu_result (*pfn_cuCtxPushCurrent)(mf_cu_context);
typedef mf_cu_result (*pfn_cuCtxPopCurrent)(mf_cu_context *);
typedef mf_cu_result (*pfn_cuCtxSynchronize)(void);
typedef mf_cu_result (*pfn_cuMemAlloc)(mf_cu_deviceptr *, size_t);
typedef mf_cu_result (*pfn_cuMemFree)(mf_cu_deviceptr);
typedef mf_cu_result (*pfn_cuMemGetInfo)(size_t *, size_t *);
typedef mf_cu_result (*pfn_cuEventCreate)(mf_cu_event *, unsigned int);
typedef mf_cu_result (*pfn_cuEventRecord)(mf_cu_event, mf_cu_stream);
typedef mf_cu_result (*pfn_cuEventQuery)(mf_cu_event);
typedef mf_cu_result (*pfn_cuEventSynchronize)(mf_cu_event);
typedef mf_cu_result (*pfn_cuEventDestroy)(mf_cu_event);
typedef mf_cu_result (*pfn_cuGetErrorName)(mf_cu_result, const char **);
typedef mf_cu_result (*pfn_cuGetErrorString)(mf_cu_result, const char **);
typedef mf_cu_result (*pfn_cuStreamGetCtx)(mf_cu_stream, mf_cu_context *);
typedef mf_cu_result (*pfn_cuStreamIsCapturing)(mf_cu_stream, int *);
typedef mf_cu_result (*pfn_cuDeviceGetAttribute)(int *, int, mf_cu_device);
typedef mf_cu_result (*pfn_cuMemGetAllocationGranularity)(size_t *, const mf_cu_mem_prop *, int);
typedef mf_cu_result (*pfn_cuMemCreate)(mf_cu_mem_handle *, size_t, const mf_cu_mem_prop *, unsigned long long);
typedef mf_cu_result (*pfn_cuMemRelease)(mf_cu_mem_handle);
typedef mf_cu_result (*pfn_cuMemAddressReserve)(mf_cu_deviceptr *, size_t, size_t, mf_cu_deviceptr,
                                                unsigned long long);
typedef mf_cu_result (*pfn_cuMemAddressFree)(mf_cu_deviceptr, size_t);
typedef mf_cu_result (*pfn_cuMemMap)(mf_cu_deviceptr, size_t, size_t, mf_cu_mem_handle, unsigned long long);
typedef mf_cu_result (*pfn_cuMemUnmap)(mf_cu_deviceptr, size_t);
typedef mf_cu_result (*pfn_cuMemSetAccess)(mf_cu_deviceptr, size_t, const mf_cu_access_desc *, size_t);

#endif /* MEMFIT_CUDA_DRIVER_H */

/* backend_sim.c — the two simulated backends: `virtual` (address arithmetic
 * only, nothing touched, so an 80 GiB trace replays on a small machine) and
 * `host` (real host memory, capped to simulate a device budget: segments from
 * jemalloc loaded at run time, or page-mapped granules of a memfd file, see
 * host_pages.c). Their events complete when a test says so. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define VIRTUAL_SPAN ((uintptr_t)1 << 46) /* 64 TiB of addresses per device */
#define HOST_LG_ALIGN 12                  /* page-aligned segments, like the driver's */
#define VIRTUAL_MIN_GRANULE ((size_t)4096)        /* any page-sized granule may be asked for */
#define VIRTUAL_GRANULE ((size_t)2 * 1024 * 1024) /* CUDA's mapping granularity: traces replay as on a GPU */

typedef struct {
  int device;
  uintptr_t stream;
  uint64_t recorded, completed; /* event sequence numbers */
} sim_stream;

typedef struct {
  int device;
  uintptr_t stream;
  uint64_t seq;
} sim_event;

typedef struct {
  mf_backend base;
  int devices;
  uint64_t capacity; /* per device */
  uint64_t *mapped;  /* per device: physical bytes given out (segments, or granules created) */
  uint64_t *vmapped; /* per device: bytes of granules mapped (vmm) */
  uintptr_t *next_addr;
  uint64_t next_handle; /* virtual granules: a counter */
  mf_host_pages *pages; /* host granules */
  int fail_maps; /* injected failures still to come; < 0: none */
  pthread_mutex_t lock;
  sim_stream *streams;
  int stream_count, stream_cap;
  /* host only */
  void *jemalloc;
  void *(*mallocx)(size_t size, int flags);
  void (*dallocx)(void *ptr, int flags);
} sim_backend;

static int sim_device_count(mf_backend *b) { return ((sim_backend *)b)->devices; }

static mf_status sim_total_memory(mf_backend *b, int device, uint64_t *bytes) {
  sim_backend *s = (sim_backend *)b;
  if (device < 0 || device >= s->devices) return _mf_error(MF_ERR_INVALID, "bad device %d", device);
  *bytes = s->capacity;
  return MF_OK;
}

/* Admit a map of size bytes against the cap and injected failures (locked). */
static mf_status admit(sim_backend *s, int device, size_t size) {
  if (device < 0 || device >= s->devices) return _mf_error(MF_ERR_INVALID, "bad device %d", device);
  if (s->fail_maps > 0) {
    s->fail_maps--;
    return _mf_error(MF_ERR_OOM, "injected map failure");
  }
  if (s->mapped[device] + size > s->capacity) return _mf_error(MF_ERR_OOM, "simulated device memory exhausted");
  return MF_OK;
}

static mf_status virtual_map(mf_backend *b, int device, size_t size, uintptr_t *addr) {
  sim_backend *s = (sim_backend *)b;
  pthread_mutex_lock(&s->lock);
  mf_status st = admit(s, device, size);
  if (st == MF_OK) {
    uintptr_t base = (uintptr_t)(device + 1) * VIRTUAL_SPAN;
    if (s->next_addr[device] + size > base + VIRTUAL_SPAN) {
      st = _mf_error(MF_ERR_BACKEND, "virtual backend: address space of device %d exhausted", device);
    } else {
      *addr = s->next_addr[device];
      s->next_addr[device] += size;
      s->mapped[device] += size;
    }
  }
  pthread_mutex_unlock(&s->lock);
  return st;
}

static mf_status virtual_unmap(mf_backend *b, int device, uintptr_t addr, size_t size) {
  sim_backend *s = (sim_backend *)b;
  pthread_mutex_lock(&s->lock);
  s->mapped[device] -= size;
  if (addr + size == s->next_addr[device]) s->next_addr[device] = addr; /* reuse the top of the range */
  pthread_mutex_unlock(&s->lock);
  return MF_OK;
}

static mf_status host_map(mf_backend *b, int device, size_t size, uintptr_t *addr) {
  sim_backend *s = (sim_backend *)b;
  pthread_mutex_lock(&s->lock);
  mf_status st = admit(s, device, size);
  if (st == MF_OK) s->mapped[device] += size;
  pthread_mutex_unlock(&s->lock);
  if (st != MF_OK) return st;
  void *p = NULL;
  if (s->mallocx) p = s->mallocx(size, HOST_LG_ALIGN);
  else if (posix_memalign(&p, (size_t)1 << HOST_LG_ALIGN, size) != 0) p = NULL;
  if (!p) {
    pthread_mutex_lock(&s->lock);
    s->mapped[device] -= size;
    pthread_mutex_unlock(&s->lock);
    return _mf_error(MF_ERR_OOM, "host backend: the host is out of memory for %zu bytes", size);
  }
  *addr = (uintptr_t)p;
  return MF_OK;
}

static mf_status host_unmap(mf_backend *b, int device, uintptr_t addr, size_t size) {
  sim_backend *s = (sim_backend *)b;
  if (s->dallocx) s->dallocx((void *)addr, 0);
  else free((void *)addr);
  pthread_mutex_lock(&s->lock);
  s->mapped[device] -= size;
  pthread_mutex_unlock(&s->lock);
  return MF_OK;
}

/* ---------------------------------------------------------- page mapping */

static mf_status virtual_granularity(mf_backend *b, int device, size_t *minimum, size_t *recommended) {
  if (device < 0 || device >= ((sim_backend *)b)->devices) return _mf_error(MF_ERR_INVALID, "bad device %d", device);
  *minimum = VIRTUAL_MIN_GRANULE;
  *recommended = VIRTUAL_GRANULE;
  return MF_OK;
}

static mf_status virtual_reserve(mf_backend *b, int device, size_t size, size_t align, uintptr_t *addr) {
  sim_backend *s = (sim_backend *)b;
  pthread_mutex_lock(&s->lock);
  uintptr_t base = (uintptr_t)(device + 1) * VIRTUAL_SPAN;
  uintptr_t at = (s->next_addr[device] + align - 1) / align * align;
  mf_status st = MF_OK;
  if (at < s->next_addr[device] || size > base + VIRTUAL_SPAN - at) {
    st = _mf_error(MF_ERR_BACKEND, "virtual backend: address space of device %d exhausted", device);
  } else {
    *addr = at;
    s->next_addr[device] = at + size;
  }
  pthread_mutex_unlock(&s->lock);
  return st;
}

static mf_status virtual_unreserve(mf_backend *b, int device, uintptr_t addr, size_t size) {
  sim_backend *s = (sim_backend *)b;
  pthread_mutex_lock(&s->lock);
  if (addr + size == s->next_addr[device]) s->next_addr[device] = addr; /* reuse the top of the range */
  pthread_mutex_unlock(&s->lock);
  return MF_OK;
}

/* Granule accounting shared by both backends: the cap and injected failures. */
static mf_status sim_admit_granules(sim_backend *s, int device, size_t granule, size_t n) {
  pthread_mutex_lock(&s->lock);
  mf_status st = admit(s, device, granule * n);
  if (st == MF_OK) s->mapped[device] += granule * n;
  pthread_mutex_unlock(&s->lock);
  return st;
}

static void sim_count(sim_backend *s, uint64_t *counter, int64_t delta) {
  pthread_mutex_lock(&s->lock);
  *counter += (uint64_t)delta;
  pthread_mutex_unlock(&s->lock);
}

static mf_status virtual_create(mf_backend *b, int device, size_t granule, size_t n, uint64_t *handles) {
  sim_backend *s = (sim_backend *)b;
  mf_status st = sim_admit_granules(s, device, granule, n);
  if (st != MF_OK) return st;
  pthread_mutex_lock(&s->lock);
  for (size_t i = 0; i < n; i++) handles[i] = ++s->next_handle;
  pthread_mutex_unlock(&s->lock);
  return MF_OK;
}

static void virtual_release(mf_backend *b, int device, size_t granule, size_t n, const uint64_t *handles) {
  (void)handles;
  sim_backend *s = (sim_backend *)b;
  sim_count(s, &s->mapped[device], -(int64_t)(granule * n));
}

static mf_status virtual_vmap(mf_backend *b, int device, uintptr_t addr, size_t granule, size_t n,
                              const uint64_t *handles) {
  (void)addr;
  (void)handles;
  sim_backend *s = (sim_backend *)b;
  sim_count(s, &s->vmapped[device], (int64_t)(granule * n));
  return MF_OK;
}

static mf_status virtual_vunmap(mf_backend *b, int device, uintptr_t addr, size_t granule, size_t n) {
  (void)addr;
  sim_backend *s = (sim_backend *)b;
  sim_count(s, &s->vmapped[device], -(int64_t)(granule * n));
  return MF_OK;
}

static mf_status host_granularity(mf_backend *b, int device, size_t *minimum, size_t *recommended) {
  sim_backend *s = (sim_backend *)b;
  if (device < 0 || device >= s->devices) return _mf_error(MF_ERR_INVALID, "bad device %d", device);
  return _mf_host_pages_granularity(s->pages, device, minimum, recommended);
}

static mf_status host_reserve(mf_backend *b, int device, size_t size, size_t align, uintptr_t *addr) {
  (void)b;
  (void)device;
  return _mf_host_pages_reserve(size, align, addr);
}

static mf_status host_unreserve(mf_backend *b, int device, uintptr_t addr, size_t size) {
  (void)b;
  (void)device;
  return _mf_host_pages_unreserve(addr, size);
}

static mf_status host_create(mf_backend *b, int device, size_t granule, size_t n, uint64_t *handles) {
  sim_backend *s = (sim_backend *)b;
  mf_status st = sim_admit_granules(s, device, granule, n);
  if (st != MF_OK) return st;
  st = _mf_host_pages_create(s->pages, device, granule, n, handles);
  if (st != MF_OK) sim_count(s, &s->mapped[device], -(int64_t)(granule * n));
  return st;
}

static void host_release(mf_backend *b, int device, size_t granule, size_t n, const uint64_t *handles) {
  sim_backend *s = (sim_backend *)b;
  _mf_host_pages_release(s->pages, device, granule, n, handles);
  sim_count(s, &s->mapped[device], -(int64_t)(granule * n));
}

static mf_status host_vmap(mf_backend *b, int device, uintptr_t addr, size_t granule, size_t n,
                           const uint64_t *handles) {
  sim_backend *s = (sim_backend *)b;
  mf_status st = _mf_host_pages_map(s->pages, device, addr, granule, n, handles);
  if (st == MF_OK) sim_count(s, &s->vmapped[device], (int64_t)(granule * n));
  return st;
}

static mf_status host_vunmap(mf_backend *b, int device, uintptr_t addr, size_t granule, size_t n) {
  sim_backend *s = (sim_backend *)b;
  mf_status st = _mf_host_pages_unmap(addr, granule, n);
  if (st == MF_OK) sim_count(s, &s->vmapped[device], -(int64_t)(granule * n));
  return st;
}

/* ----------------------------------------------------------------- events */

static sim_stream *find_stream(sim_backend *s, int device, uintptr_t stream) {
  for (int i = 0; i < s->stream_count; i++)
    if (s->streams[i].device == device && s->streams[i].stream == stream) return &s->streams[i];
  if (s->stream_count == s->stream_cap) {
    int cap = s->stream_cap ? s->stream_cap * 2 : 8;
    sim_stream *grown = realloc(s->streams, (size_t)cap * sizeof *grown);
    if (!grown) return NULL;
    s->streams = grown;
    s->stream_cap = cap;
  }
  s->streams[s->stream_count] = (sim_stream){.device = device, .stream = stream};
  return &s->streams[s->stream_count++];
}

static mf_status sim_event_record(mf_backend *b, int device, uintptr_t stream, void **event) {
  sim_backend *s = (sim_backend *)b;
  sim_event *e = malloc(sizeof *e);
  if (!e) return _mf_error(MF_ERR_HOST_MEMORY, "out of host memory for an event");
  pthread_mutex_lock(&s->lock);
  sim_stream *st = find_stream(s, device, stream);
  if (st) *e = (sim_event){.device = device, .stream = stream, .seq = ++st->recorded};
  pthread_mutex_unlock(&s->lock);
  if (!st) {
    free(e);
    return _mf_error(MF_ERR_HOST_MEMORY, "out of host memory for a stream");
  }
  *event = e;
  return MF_OK;
}

static mf_status sim_event_query(mf_backend *b, int device, void *event, bool *complete) {
  sim_backend *s = (sim_backend *)b;
  sim_event *e = event;
  (void)device;
  pthread_mutex_lock(&s->lock);
  sim_stream *st = find_stream(s, e->device, e->stream);
  *complete = !st || st->completed >= e->seq;
  pthread_mutex_unlock(&s->lock);
  return MF_OK;
}

static mf_status sim_event_synchronize(mf_backend *b, int device, void *event) {
  sim_backend *s = (sim_backend *)b;
  sim_event *e = event;
  (void)device;
  pthread_mutex_lock(&s->lock);
  sim_stream *st = find_stream(s, e->device, e->stream); /* waiting = the stream got this far */
  if (st && st->completed < e->seq) st->completed = e->seq;
  pthread_mutex_unlock(&s->lock);
  return MF_OK;
}

static void sim_event_destroy(mf_backend *b, int device, void *event) {
  (void)b;
  (void)device;
  free(event);
}

static void sim_destroy(mf_backend *b) {
  sim_backend *s = (sim_backend *)b;
  /* jemalloc stays loaded: unloading an allocator whose blocks or thread
   * caches may still be referenced is not safe. */
  pthread_mutex_destroy(&s->lock);
  _mf_host_pages_free(s->pages);
  free(s->mapped);
  free(s->vmapped);
  free(s->next_addr);
  free(s->streams);
  free(s);
}

#define SIM_EVENTS                                                                             \
  .device_count = sim_device_count, .total_memory = sim_total_memory, .event_record = sim_event_record, \
  .event_query = sim_event_query, .event_synchronize = sim_event_synchronize,                          \
  .event_destroy = sim_event_destroy, .synchronize = NULL, .destroy = sim_destroy
#define HOST_PAGES                                                                                     \
  .vmm_granularity = host_granularity, .vmm_reserve = host_reserve, .vmm_unreserve = host_unreserve,   \
  .vmm_create = host_create, .vmm_release = host_release, .vmm_map = host_vmap, .vmm_unmap = host_vunmap

static const mf_backend_ops virtual_ops = {
    .name = "virtual", .map = virtual_map, .unmap = virtual_unmap, SIM_EVENTS,
    .vmm_granularity = virtual_granularity, .vmm_reserve = virtual_reserve, .vmm_unreserve = virtual_unreserve,
    .vmm_create = virtual_create, .vmm_release = virtual_release, .vmm_map = virtual_vmap,
    .vmm_unmap = virtual_vunmap};

static const mf_backend_ops host_ops = {.name = "host", .map = host_map, .unmap = host_unmap, SIM_EVENTS, HOST_PAGES};

/* Segments from posix_memalign where jemalloc cannot be loaded. */
static const mf_backend_ops host_libc_ops = {
    .name = "host-libc", .map = host_map, .unmap = host_unmap, SIM_EVENTS, HOST_PAGES};

static bool is_sim(const mf_backend *b) {
  return b && (b->ops == &virtual_ops || b->ops == &host_ops || b->ops == &host_libc_ops);
}

static mf_status sim_create(int devices, uint64_t capacity, sim_backend **out) {
  if (devices < 1 || devices > 64) return _mf_error(MF_ERR_INVALID, "simulated backend: devices %d not in 1..64", devices);
  sim_backend *s = calloc(1, sizeof *s);
  if (s) {
    s->mapped = calloc((size_t)devices, sizeof *s->mapped);
    s->vmapped = calloc((size_t)devices, sizeof *s->vmapped);
    s->next_addr = calloc((size_t)devices, sizeof *s->next_addr);
  }
  if (!s || !s->mapped || !s->vmapped || !s->next_addr) {
    if (s) {
      free(s->mapped);
      free(s->vmapped);
      free(s->next_addr);
      free(s);
    }
    return _mf_error(MF_ERR_HOST_MEMORY, "out of host memory for a backend");
  }
  s->devices = devices;
  s->capacity = capacity;
  s->fail_maps = -1;
  for (int i = 0; i < devices; i++) s->next_addr[i] = (uintptr_t)(i + 1) * VIRTUAL_SPAN;
  pthread_mutex_init(&s->lock, NULL);
  *out = s;
  return MF_OK;
}

MF_API mf_status mf_backend_virtual_create(int devices, uint64_t capacity, mf_backend **out) {
  if (!out) return _mf_error(MF_ERR_INVALID, "mf_backend_virtual_create: NULL out");
  sim_backend *s;
  mf_status st = sim_create(devices, capacity ? capacity : (uint64_t)1 << 40, &s);
  if (st != MF_OK) return st;
  s->base.ops = &virtual_ops;
  *out = &s->base;
  return MF_OK;
}

MF_API mf_status mf_backend_host_create(int devices, uint64_t capacity, mf_backend **out) {
  if (!out) return _mf_error(MF_ERR_INVALID, "mf_backend_host_create: NULL out");
  if (!capacity) capacity = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
  sim_backend *s;
  mf_status st = sim_create(devices, capacity, &s);
  if (st != MF_OK) return st;
  if ((st = _mf_host_pages_new(devices, &s->pages)) != MF_OK) {
    s->base.ops = &host_ops;
    sim_destroy(&s->base);
    return st;
  }
  /* RTLD_LOCAL: jemalloc's malloc must not replace the host process's malloc.
   * Debian's jemalloc uses initial-exec TLS, which glibc can only give a
   * dlopen'ed library from its small static TLS surplus: in a process started
   * without GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536 (or with
   * jemalloc already preloaded) the dlopen may fail, and the backend then
   * uses posix_memalign and names itself "host-libc". */
  s->jemalloc = dlopen("libjemalloc.so.2", RTLD_NOW | RTLD_LOCAL);
  if (s->jemalloc) {
    *(void **)&s->mallocx = dlsym(s->jemalloc, "mallocx");
    *(void **)&s->dallocx = dlsym(s->jemalloc, "dallocx");
    if (!s->mallocx || !s->dallocx) {
      dlclose(s->jemalloc);
      s->jemalloc = NULL;
      s->mallocx = NULL;
      s->dallocx = NULL;
    }
  }
  s->base.ops = s->jemalloc ? &host_ops : &host_libc_ops; /* without jemalloc: posix_memalign */
  *out = &s->base;
  return MF_OK;
}

MF_API void mf_backend_destroy(mf_backend *b) {
  if (b && b->ops && b->ops->destroy) b->ops->destroy(b);
}

MF_API mf_status mf_backend_sim_complete(mf_backend *b, int device, uintptr_t stream) {
  if (!is_sim(b)) return _mf_error(MF_ERR_INVALID, "mf_backend_sim_complete: not a simulated backend");
  sim_backend *s = (sim_backend *)b;
  pthread_mutex_lock(&s->lock);
  for (int i = 0; i < s->stream_count; i++)
    if (s->streams[i].device == device && (stream == UINTPTR_MAX || s->streams[i].stream == stream))
      s->streams[i].completed = s->streams[i].recorded;
  pthread_mutex_unlock(&s->lock);
  return MF_OK;
}

MF_API mf_status mf_backend_sim_fail_maps(mf_backend *b, int n) {
  if (!is_sim(b)) return _mf_error(MF_ERR_INVALID, "mf_backend_sim_fail_maps: not a simulated backend");
  sim_backend *s = (sim_backend *)b;
  pthread_mutex_lock(&s->lock);
  s->fail_maps = n;
  pthread_mutex_unlock(&s->lock);
  return MF_OK;
}

MF_API mf_status mf_backend_sim_usage(mf_backend *b, int device, uint64_t *physical_bytes, uint64_t *mapped_bytes) {
  if (!is_sim(b)) return _mf_error(MF_ERR_INVALID, "mf_backend_sim_usage: not a simulated backend");
  sim_backend *s = (sim_backend *)b;
  if (device < 0 || device >= s->devices) return _mf_error(MF_ERR_INVALID, "mf_backend_sim_usage: bad device %d", device);
  pthread_mutex_lock(&s->lock);
  if (physical_bytes) *physical_bytes = s->mapped[device];
  if (mapped_bytes) *mapped_bytes = s->vmapped[device];
  pthread_mutex_unlock(&s->lock);
  return MF_OK;
}

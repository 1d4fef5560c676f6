/* host_pages.c — the host backend's page mapping: physical granules are pages
 * of a memfd file, mapped MAP_SHARED|MAP_FIXED into ranges reserved PROT_NONE,
 * and given back with fallocate(PUNCH_HOLE). The allocator's vmm logic thus
 * runs on real memory with real aliasing: a granule mapped twice shows the
 * same bytes at both addresses, which the stress tests would see.
 *
 * Note [Host pages and fork]
 * MAP_SHARED pages stay shared with a forked child (a DataLoader worker), and
 * the child's copy of the allocator would hand out the same free blocks as the
 * parent: both would write the same memory. So in the child, right after
 * fork, every mapping of memfit's files is replaced by a MAP_PRIVATE mapping
 * of the same pages (copy-on-write, as malloc'ed memory behaves; pages the
 * child has not written yet may still show the parent's later writes), the
 * parent's files are marked inherited (never punched, never grown), and the
 * child's new granules come from a file of its own.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define HOST_MAX_FILES 16                            /* a chain of forks this deep, each with its own file */
#define HOST_FILE_SHIFT 48                           /* handle = file << 48 | byte offset */

typedef struct {
  int fd;
  ino_t inode;
  bool inherited; /* the parent's (after fork): mapped private, never punched or grown */
} host_file;

typedef struct {
  host_file files[HOST_MAX_FILES];
  int file_count;
  uint64_t *free_offsets; /* of the current file, reusable */
  size_t free_len, free_cap;
  uint64_t high; /* the current file's size in use */
  char why[256]; /* why this device cannot map pages, "" if it can */
} host_device;

struct mf_host_pages {
  int devices;
  size_t page;
  host_device *dev;
  mf_host_pages *next_registered; /* the fork handler's list */
};

/* ------------------------------------------------------------ fork safety */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static mf_host_pages *registry;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static host_file *file_by_inode(ino_t inode) {
  for (mf_host_pages *p = registry; p; p = p->next_registered)
    for (int d = 0; d < p->devices; d++)
      for (int f = 0; f < p->dev[d].file_count; f++)
        if (p->dev[d].files[f].inode == inode && p->dev[d].files[f].fd >= 0) return &p->dev[d].files[f];
  return NULL;
}

static unsigned long long parse_hex(const char **s) {
  unsigned long long v = 0;
  for (;; (*s)++) {
    char c = **s;
    int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (digit < 0) return v;
    v = v * 16 + (unsigned)digit;
  }
}

/* One line of /proc/self/maps: "start-end perms offset dev inode path". */
static void remap_private(const char *line) {
  const char *s = line;
  unsigned long long start = parse_hex(&s);
  if (*s++ != '-') return;
  unsigned long long end = parse_hex(&s);
  if (*s++ != ' ') return;
  bool shared = s[3] == 's';
  while (*s && *s != ' ') s++;
  if (*s++ != ' ') return;
  unsigned long long offset = parse_hex(&s);
  while (*s == ' ') s++;
  while (*s && *s != ' ') s++; /* dev */
  while (*s == ' ') s++;
  unsigned long long inode = 0;
  for (; *s >= '0' && *s <= '9'; s++) inode = inode * 10 + (unsigned)(*s - '0');
  if (!shared || !strstr(s, "memfd:memfit")) return;
  host_file *f = file_by_inode((ino_t)inode);
  if (f)
    mmap((void *)(uintptr_t)start, (size_t)(end - start), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, f->fd,
         (off_t)offset);
}

/* Runs in the child right after fork, one thread: only system calls, a
 * static buffer, no malloc. */
static void atfork_child(void) {
  for (mf_host_pages *p = registry; p; p = p->next_registered)
    for (int d = 0; d < p->devices; d++) {
      host_device *hd = &p->dev[d];
      for (int f = 0; f < hd->file_count; f++) hd->files[f].inherited = true;
      hd->free_len = 0;
      hd->high = 0;
    }
  int fd = registry ? open("/proc/self/maps", O_RDONLY | O_CLOEXEC) : -1;
  if (fd >= 0) {
    static char buf[1 << 16];
    size_t len = 0;
    for (;;) {
      ssize_t got = read(fd, buf + len, sizeof buf - 1 - len);
      if (got <= 0) break;
      len += (size_t)got;
      buf[len] = '\0';
      char *line = buf, *nl;
      while ((nl = strchr(line, '\n'))) {
        *nl = '\0';
        remap_private(line);
        line = nl + 1;
      }
      len = (size_t)(buf + len - line);
      memmove(buf, line, len);
      if (len == sizeof buf - 1) len = 0; /* a line longer than the buffer: not ours */
    }
    close(fd);
  }
  pthread_mutex_unlock(&registry_lock);
}

static void atfork_prepare(void) { pthread_mutex_lock(&registry_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&registry_lock); }
static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

/* ------------------------------------------------------------------ files */

/* The device's current file, made on first use (in a forked child: anew). */
static mf_status current_file(host_device *hd, int device, int *index) {
  if (hd->file_count && !hd->files[hd->file_count - 1].inherited) {
    *index = hd->file_count - 1;
    return MF_OK;
  }
  if (hd->file_count == HOST_MAX_FILES)
    return _mf_error(MF_ERR_BACKEND, "host backend: device %d: more than %d nested forks", device, HOST_MAX_FILES);
  int fd = memfd_create("memfit-host", MFD_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    int err = errno;
    if (fd >= 0) close(fd);
    return _mf_error(MF_ERR_BACKEND, "host backend: memfd_create failed: %s", strerror(err));
  }
  pthread_mutex_lock(&registry_lock);
  hd->files[hd->file_count] = (host_file){.fd = fd, .inode = st.st_ino};
  *index = hd->file_count++;
  pthread_mutex_unlock(&registry_lock);
  hd->high = 0;
  hd->free_len = 0;
  return MF_OK;
}

mf_status _mf_host_pages_new(int devices, mf_host_pages **out) {
  pthread_once(&atfork_once, register_atfork);
  mf_host_pages *p = calloc(1, sizeof *p);
  if (p) p->dev = calloc((size_t)devices, sizeof *p->dev);
  if (!p || !p->dev) {
    free(p);
    return _mf_error(MF_ERR_HOST_MEMORY, "out of host memory for the host backend");
  }
  p->devices = devices;
  long page = sysconf(_SC_PAGESIZE);
  p->page = page > 0 ? (size_t)page : 4096;
  /* Try one file now: where memfd is missing, vmm:auto says so at creation. */
  int index;
  if (current_file(&p->dev[0], 0, &index) != MF_OK)
    for (int d = 0; d < devices; d++) snprintf(p->dev[d].why, sizeof p->dev[d].why, "%s", mf_last_error());
  _mf_clear_error();
  pthread_mutex_lock(&registry_lock);
  p->next_registered = registry;
  registry = p;
  pthread_mutex_unlock(&registry_lock);
  *out = p;
  return MF_OK;
}

void _mf_host_pages_free(mf_host_pages *p) {
  if (!p) return;
  pthread_mutex_lock(&registry_lock);
  for (mf_host_pages **link = &registry; *link; link = &(*link)->next_registered)
    if (*link == p) {
      *link = p->next_registered;
      break;
    }
  pthread_mutex_unlock(&registry_lock);
  for (int d = 0; d < p->devices; d++) {
    for (int f = 0; f < p->dev[d].file_count; f++) close(p->dev[d].files[f].fd);
    free(p->dev[d].free_offsets);
  }
  free(p->dev);
  free(p);
}

/* ----------------------------------------------------------------- the ops */

mf_status _mf_host_pages_granularity(mf_host_pages *p, int device, size_t *minimum, size_t *recommended) {
  if (p->dev[device].why[0]) return _mf_error(MF_ERR_NO_DEVICE, "%s", p->dev[device].why);
  /* The page: the least rounding, at no step time measured against 16 KiB,
   * 64 KiB or 2 MiB (allocator/README.md, "Host granule"). */
  *minimum = *recommended = p->page;
  return MF_OK;
}

mf_status _mf_host_pages_reserve(size_t size, size_t align, uintptr_t *addr) {
  /* Over-reserve by one alignment and trim, so the range starts on a granule. */
  if (size > SIZE_MAX - align) return _mf_error(MF_ERR_INVALID, "host backend: range of %zu bytes", size);
  void *p = mmap(NULL, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return _mf_error(MF_ERR_BACKEND, "host backend: reserving %zu bytes of addresses failed: %s", size,
                     strerror(errno));
  uintptr_t start = (uintptr_t)p, aligned = (start + align - 1) / align * align;
  if (aligned > start) munmap(p, aligned - start);
  if (align > aligned - start) munmap((void *)(aligned + size), align - (aligned - start));
  *addr = aligned;
  return MF_OK;
}

mf_status _mf_host_pages_unreserve(uintptr_t addr, size_t size) {
  if (munmap((void *)addr, size) != 0)
    return _mf_error(MF_ERR_BACKEND, "host backend: munmap of a range failed: %s", strerror(errno));
  return MF_OK;
}

mf_status _mf_host_pages_create(mf_host_pages *p, int device, size_t granule, size_t n, uint64_t *handles) {
  host_device *hd = &p->dev[device];
  int file;
  mf_status st = current_file(hd, device, &file);
  if (st != MF_OK) return st;
  size_t reused = n < hd->free_len ? n : hd->free_len;
  uint64_t new_high = hd->high + (uint64_t)(n - reused) * granule;
  if (new_high > ((uint64_t)1 << HOST_FILE_SHIFT))
    return _mf_error(MF_ERR_OOM, "host backend: device %d's file is full", device);
  if (new_high > hd->high && ftruncate(hd->files[file].fd, (off_t)new_high) != 0)
    return _mf_error(MF_ERR_OOM, "host backend: growing the memory file failed: %s", strerror(errno));
  /* Fresh pages first, in order, so that neighbours map with one mmap. */
  size_t k = 0;
  for (uint64_t off = hd->high; off < new_high; off += granule) handles[k++] = (uint64_t)file << HOST_FILE_SHIFT | off;
  while (k < n) handles[k++] = (uint64_t)file << HOST_FILE_SHIFT | hd->free_offsets[--hd->free_len];
  hd->high = new_high;
  return MF_OK;
}

void _mf_host_pages_release(mf_host_pages *p, int device, size_t granule, size_t n, const uint64_t *handles) {
  host_device *hd = &p->dev[device];
  for (size_t i = 0; i < n; i++) {
    int file = (int)(handles[i] >> HOST_FILE_SHIFT);
    uint64_t off = handles[i] & (((uint64_t)1 << HOST_FILE_SHIFT) - 1);
    if (file >= hd->file_count || hd->files[file].inherited) continue; /* the parent's pages stay the parent's */
    /* The pages go back to the system now; the offset is reused later. */
    fallocate(hd->files[file].fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)granule);
    if (hd->free_len == hd->free_cap) {
      size_t cap = hd->free_cap ? hd->free_cap * 2 : 256;
      uint64_t *grown = realloc(hd->free_offsets, cap * sizeof *grown);
      if (!grown) continue; /* the offset is lost to reuse; the file only grows */
      hd->free_offsets = grown;
      hd->free_cap = cap;
    }
    hd->free_offsets[hd->free_len++] = off;
  }
}

mf_status _mf_host_pages_unmap(uintptr_t addr, size_t granule, size_t n) {
  /* Not munmap: that would give the addresses back to the process, where any
   * mmap could take them; PROT_NONE keeps them reserved. */
  if (mmap((void *)addr, granule * n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) ==
      MAP_FAILED)
    return _mf_error(MF_ERR_BACKEND, "host backend: unmapping %zu granules failed: %s", n, strerror(errno));
  return MF_OK;
}

mf_status _mf_host_pages_map(mf_host_pages *p, int device, uintptr_t addr, size_t granule, size_t n,
                             const uint64_t *handles) {
  host_device *hd = &p->dev[device];
  for (size_t i = 0; i < n;) {
    /* One mmap per run of consecutive pages of one file. */
    size_t j = i + 1;
    while (j < n && handles[j] == handles[j - 1] + granule) j++;
    int file = (int)(handles[i] >> HOST_FILE_SHIFT);
    uint64_t off = handles[i] & (((uint64_t)1 << HOST_FILE_SHIFT) - 1);
    int flags = MAP_FIXED | (file < hd->file_count && hd->files[file].inherited ? MAP_PRIVATE : MAP_SHARED);
    void *at = (void *)(addr + i * granule);
    if (file >= hd->file_count ||
        mmap(at, (j - i) * granule, PROT_READ | PROT_WRITE, flags, hd->files[file].fd, (off_t)off) == MAP_FAILED) {
      int err = file >= hd->file_count ? EINVAL : errno;
      if (i) _mf_host_pages_unmap(addr, granule, i);
      if (err == ENOMEM)
        return _mf_error(MF_ERR_BACKEND,
                         "host backend: mmap of %zu granules failed: too many mappings (raise vm.max_map_count, "
                         "or a larger vmm_granule)",
                         n);
      return _mf_error(MF_ERR_BACKEND, "host backend: mmap of %zu granules failed: %s", n, strerror(err));
    }
    i = j;
  }
  return MF_OK;
}

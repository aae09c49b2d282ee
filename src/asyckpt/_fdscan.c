/*
 * asyckpt._fdscan: read one fd table (readlink + stat + fdinfo per fd) without the GIL.
 *
 * The pure-Python reader (_procread.py) spends most of its time per fd on interpreter
 * overhead around five syscalls, and two Python threads doing it contend for the GIL so
 * badly that a second one slows the scan down (docs/performance.md has the numbers).  Here the whole table is read with the
 * GIL released, so scanner threads run in parallel with each other and with the Python
 * record builder; Python objects are made at the end, in one go.
 *
 * read_table(fd_dir, fdinfo_dir) -> list of tuples, ascending fd order:
 *   (fd, link: str, st_mode, st_dev, st_ino, st_rdev, st_nlink, st_uid, st_gid,
 *    st_size, st_mtime_ns, st_blocks, pos, flags, mnt_id, fdinfo_rest: bytes)
 * pos, flags (octal in the text) and mnt_id come from the leading fdinfo lines, which the
 * kernel always writes first; fdinfo_rest is every line after them and "ino:", exactly
 * as _procparse.split_fdinfo computes it in Python.
 * An fd that vanishes between readdir and read is skipped (only possible on a tree
 * that is not frozen).  Any other failure raises OSError(errno, strerror, path), which
 * the caller translates.
 *
 * read_tables(dirs, parents) reads many tables with one release of the GIL; with
 * parents (frozen trees only) an fd that kcmp finds shared with the parent's fd of the
 * same number is read no further than its fdinfo and comes back as (fd, flags).  Also
 * here, because through ctypes or the interpreter they cost several times their
 * syscalls: kcmp_files, pidfd_getfd, and dedup_rows, the resolver's per-fd dedup loop.
 */
#include "_fdscan.h"
#include <structmember.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define INFO_CHUNK 4096

struct entry {
    int fd;
    long long pos;
    unsigned long flags;
    long mnt_id;
    size_t rest;        /* offset in the fdinfo text where the lines past the common ones
                           start, while it is split */
    struct stat st;
    char *link;
    ssize_t link_len;
    char *info;         /* the fdinfo lines past the common ones; NULL when there are none */
    size_t info_len;
    int inherited;      /* the parent's fd of the same number: only fd and flags read */
};

struct scan {
    struct entry *entries;
    size_t n, cap;
    char *buf;          /* fdinfo read buffer, reused for every fd */
    size_t buf_cap;
    int err;            /* errno of the first hard failure, 0 if none */
    int err_fd;         /* the fd it happened on, -1 for the directories */
    const char *err_what;
    /* The table's listing (list_table), taken once, and how far reading it has got: the
     * fds are read from this listing, piece by piece or whole (read_entries). */
    int dfd, ifd;       /* its fd and fdinfo directories, open while fds remain to read */
    int *fds;
    size_t nfds, next;
    pid_t parent, tid;  /* parent > 0: an fd shared with parent's same fd is inherited */
};

static void init_scan(struct scan *s, pid_t parent, pid_t tid) {
    memset(s, 0, sizeof *s);
    s->err_fd = -1;
    s->dfd = s->ifd = -1;
    s->parent = parent;
    s->tid = tid;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* The rows read last (their entries), once they are Python objects. */
static void free_entries(struct scan *s) {
    for (size_t i = 0; i < s->n; i++) {
        free(s->entries[i].link);
        free(s->entries[i].info);
    }
    free(s->entries);
    s->entries = NULL;
    s->n = s->cap = 0;
}

static void close_dirs(struct scan *s) {
    if (s->dfd >= 0) close(s->dfd);
    if (s->ifd >= 0) close(s->ifd);
    s->dfd = s->ifd = -1;
}

static void free_scan(struct scan *s) {
    free_entries(s);
    free(s->buf);
    s->buf = NULL;
    free(s->fds);
    s->fds = NULL;
    close_dirs(s);
}

/* Read a whole fdinfo file into the scan's buffer, which grows as needed and serves
 * every fd of the scan (a buffer per fd, kept until the rows are built, made page faults
 * a tenth of the scan).  seq_file hands a file over in one read when it fits, so a short
 * read means the end; only a full buffer needs another read.  Returns the length, or -1
 * with errno set. */
static ssize_t read_all(int fd, struct scan *s) {
    size_t n = 0;
    if (!s->buf) {
        s->buf = malloc(INFO_CHUNK);
        if (!s->buf) { errno = ENOMEM; return -1; }
        s->buf_cap = INFO_CHUNK;
    }
    for (;;) {
        ssize_t r = read(fd, s->buf + n, s->buf_cap - n);
        if (r < 0) return -1;
        n += (size_t)r;
        if (n < s->buf_cap || r == 0) break;
        char *bigger = realloc(s->buf, s->buf_cap * 2);
        if (!bigger) { errno = ENOMEM; return -1; }
        s->buf = bigger;
        s->buf_cap *= 2;
    }
    return (ssize_t)n;
}

static int starts(const char *p, const char *end, const char *prefix) {
    size_t n = strlen(prefix);
    return (size_t)(end - p) >= n && memcmp(p, prefix, n) == 0;
}

/* Mirror of _procparse.split_fdinfo: consume leading pos/flags/mnt_id/ino lines; the
 * offset of the rest in info goes to e->rest. */
static void split_fdinfo(struct entry *e, const char *info, size_t info_len) {
    const char *p = info, *end = info + info_len;
    e->pos = 0; e->flags = 0; e->mnt_id = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        char num[32];
        const char *v;
        int base = 10, which;
        if (starts(p, eol, "pos:")) { v = p + 4; which = 0; }
        else if (starts(p, eol, "flags:")) { v = p + 6; which = 1; base = 8; }
        else if (starts(p, eol, "mnt_id:")) { v = p + 7; which = 2; }
        else if (starts(p, eol, "ino:")) { v = p + 4; which = 3; }
        else break;
        while (v < eol && (*v == ' ' || *v == '\t')) v++;
        size_t len = (size_t)(eol - v);
        if (len >= sizeof num) break;
        memcpy(num, v, len);
        num[len] = '\0';
        if (which == 0) e->pos = strtoll(num, NULL, base);
        else if (which == 1) e->flags = strtoul(num, NULL, base);
        else if (which == 2) e->mnt_id = strtol(num, NULL, base);
        p = nl ? nl + 1 : end;
    }
    e->rest = (size_t)(p - info);
}

#ifndef SYS_kcmp
#include <sys/syscall.h>
#endif

/* Whether fdinfo lines hold a lock: line (fs/locks.c prints them as "lock:\t..."). */
static int has_lock_line(const char *text, size_t len) {
    return len >= 5 && memmem(text, len, "lock:", 5) != NULL;
}

/* Whether fd of tid is the same open file description as the same fd number of parent
 * (kcmp KCMP_FILE).  Any error (the parent has no such fd, is a zombie, ...) is "no":
 * the fd is then read in full, and the resolver decides as it always did. */
static int same_as_parent(pid_t parent, pid_t tid, int fd) {
    return syscall(SYS_kcmp, parent, tid, 0 /* KCMP_FILE */, (long)fd, (long)fd) == 0;
}

/* parent > 0: an fd that kcmp finds shared with the parent's fd of the same number (the
 * common case: inherited by fork) skips readlink and stat, which only repeat what the
 * parent's row holds; its fdinfo is still read, for the fd's own close-on-exec flag. */

/* The link text of one fd, or an empty one when the kernel will not give it: a path
 * longer than PATH_MAX reads ENAMETOOLONG (fs/proc/base.c do_proc_readlink), and a
 * user can make one (nested directories), so it must not fail the capture.  The fd is
 * recorded all the same, without a name (File.path_state "too-long"). */
static ssize_t readlink_name(int dfd, const char *name, char *link)
{
    ssize_t n = readlinkat(dfd, name, link, PATH_MAX);
    if (n < 0 && errno == ENAMETOOLONG) {
        errno = 0;
        return 0;
    }
    return n;
}
/* The listing of one table: both directories opened (kept open for read_entries) and
 * the fd numbers read, sorted.  On failure s->err is set and nothing is left open. */
static void list_table(const char *fd_dir, const char *info_dir, struct scan *s) {
    size_t fds_cap = 0;
    int lfd = -1;
    DIR *d = NULL;

    s->dfd = open(fd_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dfd < 0) { s->err = errno; s->err_what = fd_dir; goto out; }
    s->ifd = open(info_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->ifd < 0) { s->err = errno; s->err_what = info_dir; goto out; }
    lfd = dup(s->dfd);
    if (lfd < 0 || !(d = fdopendir(lfd))) {
        s->err = errno; s->err_what = fd_dir;
        if (lfd >= 0) close(lfd);
        goto out;
    }
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
        if (s->nfds == fds_cap) {
            size_t cap = fds_cap ? fds_cap * 2 : 256;
            int *more = realloc(s->fds, cap * sizeof *s->fds);
            if (!more) { s->err = ENOMEM; s->err_what = fd_dir; goto out; }
            s->fds = more;
            fds_cap = cap;
        }
        s->fds[s->nfds++] = atoi(de->d_name);
    }
    if (errno && errno != ENOENT) { s->err = errno; s->err_what = fd_dir; goto out; }
    qsort(s->fds, s->nfds, sizeof *s->fds, cmp_int);
out:
    if (d) closedir(d);
    if (s->err) close_dirs(s);
}

/* Read the next fds of the listing, at most limit of them (0: all that are left), into
 * s->entries, in place of the previous ones (freed: they were made into rows).  The
 * directories are closed once the last fd is read, or on a failure (s->err). */
static void read_entries(struct scan *s, size_t limit) {
    free_entries(s);
    size_t end = s->nfds - s->next;
    if (limit && end > limit) end = limit;
    end += s->next;
    s->entries = calloc(end > s->next ? end - s->next : 1, sizeof *s->entries);
    if (!s->entries) { s->err = ENOMEM; s->err_what = "fd"; goto out; }
    s->cap = end - s->next;

    int dfd = s->dfd, ifd = s->ifd;
    pid_t parent = s->parent, tid = s->tid;
    char name[16], link[PATH_MAX + 1];
    for (; s->next < end; s->next++) {
        int fd = s->fds[s->next];
        struct entry *e = &s->entries[s->n];
        snprintf(name, sizeof name, "%d", fd);
        ssize_t n = 0;
        e->inherited = parent > 0 && same_as_parent(parent, tid, fd);
        if (!e->inherited) {
            n = readlink_name(dfd, name, link);
            if (n < 0) goto fd_failed;
            if (fstatat(dfd, name, &e->st, 0) < 0) goto fd_failed;
        }
        int f = openat(ifd, name, O_RDONLY | O_CLOEXEC);
        if (f < 0) goto fd_failed;
        ssize_t got = read_all(f, s);
        int saved = errno;
        close(f);
        errno = saved;
        if (got < 0) goto fd_failed;
        split_fdinfo(e, s->buf, (size_t)got);
        e->fd = fd;
        if (e->inherited) {
            /* A POSIX lock taken through an inherited fd is listed only in the fdinfo of
             * the fds of its owner's table, so the parent's row does not show it: such an
             * fd is read in full, for the resolver to gather its lock lines. */
            if (!has_lock_line(s->buf + e->rest, (size_t)got - e->rest)) { s->n++; continue; }
            e->inherited = 0;
            n = readlink_name(dfd, name, link);
            if (n < 0) goto fd_failed;
            if (fstatat(dfd, name, &e->st, 0) < 0) goto fd_failed;
        }
        /* Only the lines past the common ones are kept (none, for most files). */
        e->info_len = (size_t)got - e->rest;
        e->info = NULL;
        if (e->info_len) {
            e->info = malloc(e->info_len);
            if (!e->info) { errno = ENOMEM; goto fd_failed; }
            memcpy(e->info, s->buf + e->rest, e->info_len);
        }
        e->link = malloc((size_t)n + 1);
        if (!e->link) { free(e->info); e->info = NULL; errno = ENOMEM; goto fd_failed; }
        memcpy(e->link, link, (size_t)n);
        e->link[n] = '\0';
        e->link_len = n;
        s->n++;
        continue;
    fd_failed:
        if (errno == ENOENT) { errno = 0; continue; }  /* closed in the meantime */
        s->err = errno; s->err_fd = fd; s->err_what = "fd";
        goto out;
    }
out:
    if (s->err || s->next >= s->nfds) close_dirs(s);
}

/* One whole table: its listing, then every fd of it. */
static void scan_table(const char *fd_dir, const char *info_dir, struct scan *s) {
    list_table(fd_dir, info_dir, s);
    if (!s->err) read_entries(s, 0);
    close_dirs(s);
}

/* The row types, made once at import and exported as FdRow and InheritedFd: the field
 * names are _rows.RawFd's and _rows.InheritedFd's (a test checks that they agree). */
PyTypeObject *asyckpt_fd_row_type;
static PyTypeObject *inherited_fd_type;

static PyStructSequence_Field fd_row_fields[] = {
    {"fd", NULL}, {"link", NULL}, {"st_mode", NULL}, {"st_dev", NULL},
    {"st_ino", NULL}, {"st_rdev", NULL}, {"st_nlink", NULL}, {"st_uid", NULL},
    {"st_gid", NULL}, {"st_size", NULL}, {"st_mtime_ns", NULL}, {"st_blocks", NULL},
    {"pos", NULL}, {"flags", NULL}, {"mnt_id", NULL}, {"fdinfo_rest", NULL},
    {NULL, NULL},
};
static PyStructSequence_Desc fd_row_desc = {
    "asyckpt._fdscan.FdRow",
    "One fd as read from /proc: its number, link, stat fields, and fdinfo (pos, flags,"
    " mnt_id, and the rest unparsed).",
    fd_row_fields, 16,
};
static PyStructSequence_Field inherited_fd_fields[] = {{"fd", NULL}, {"flags", NULL}, {NULL, NULL}};
static PyStructSequence_Desc inherited_fd_desc = {
    "asyckpt._fdscan.InheritedFd",
    "An fd found (kcmp) to be its parent's fd of the same number: only its fdinfo flags.",
    inherited_fd_fields, 2,
};

/* A row of one of those types, its fields unset (NULL) until filled: what
 * PyStructSequence_New makes, without its two lookups in the type's dict (n_fields,
 * n_sequence_fields) for every row.  Their sizes are known here: every field visible. */
PyObject *asyckpt_new_row(PyTypeObject *type, Py_ssize_t n) {
    PyStructSequence *row = PyObject_GC_NewVar(PyStructSequence, type, n);
    if (!row) return NULL;
    memset(row->ob_item, 0, (size_t)n * sizeof(PyObject *));
    return (PyObject *)row;
}

/* The ints most fds of a table repeat (st_mode, st_dev, st_uid, st_gid, flags, mnt_id),
 * one object for each value among the last few met: past 256 every int is an object of
 * its own (32 bytes), and a new description's row is held to the end of the capture
 * (W3: ~6 MiB of them, 53k rows).  Filled per table, released after it. */
#define INT_CACHE 8
struct int_cache {
    unsigned long long value[INT_CACHE];
    PyObject *obj[INT_CACHE];
    int next;
};

static PyObject *cached_int(struct int_cache *c, unsigned long long value) {
    for (int k = 0; k < INT_CACHE; k++) {
        if (c->obj[k] && c->value[k] == value) {
            Py_INCREF(c->obj[k]);
            return c->obj[k];
        }
    }
    PyObject *obj = PyLong_FromUnsignedLongLong(value);
    if (!obj) return NULL;
    Py_XDECREF(c->obj[c->next]);
    Py_INCREF(obj);
    c->obj[c->next] = obj;
    c->value[c->next] = value;
    c->next = (c->next + 1) % INT_CACHE;
    return obj;
}

static void int_cache_clear(struct int_cache *c) {
    for (int k = 0; k < INT_CACHE; k++) Py_CLEAR(c->obj[k]);
}

enum { C_MODE, C_DEV, C_UID, C_GID, C_FLAGS, C_MNT, C_FIELDS };

static PyObject *scan_to_python_cached(struct scan *s, const char *fd_dir,
                                       struct int_cache *cache) {
    if (s->err) {
        errno = s->err;
        if (s->err_fd >= 0) {
            PyObject *where = PyUnicode_FromFormat("%s/%d", fd_dir, s->err_fd);
            if (where) {
                PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, where);
                Py_DECREF(where);
            }
        } else {
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, s->err_what);
        }
        return NULL;
    }
    PyObject *result = PyList_New((Py_ssize_t)s->n);
    if (!result) return NULL;
    for (size_t i = 0; i < s->n; i++) {
        struct entry *e = &s->entries[i];
        if (e->inherited) {
            PyObject *item = asyckpt_new_row(inherited_fd_type, 2);
            if (!item) { Py_DECREF(result); return NULL; }
            PyList_SET_ITEM(result, (Py_ssize_t)i, item);
            PyObject *fd = PyLong_FromLong(e->fd), *flags = PyLong_FromUnsignedLong(e->flags);
            if (!fd || !flags) { Py_XDECREF(fd); Py_XDECREF(flags); Py_DECREF(result); return NULL; }
            PyStructSequence_SET_ITEM(item, 0, fd);
            PyStructSequence_SET_ITEM(item, 1, flags);
            continue;
        }
        /* Built by hand, not with Py_BuildValue: this loop holds the GIL, and it is the
         * only part of a table scan that does.  A struct sequence is a tuple whose fields
         * also have names (member descriptors), so the resolver may read either way. */
        PyObject *item = asyckpt_new_row(asyckpt_fd_row_type, 16);
        if (!item) { Py_DECREF(result); return NULL; }
        PyList_SET_ITEM(result, (Py_ssize_t)i, item);
        PyObject *v[16] = {
            PyLong_FromLong(e->fd),
            PyUnicode_DecodeFSDefaultAndSize(e->link, e->link_len),
            cached_int(&cache[C_MODE], e->st.st_mode),
            cached_int(&cache[C_DEV], e->st.st_dev),
            PyLong_FromUnsignedLongLong(e->st.st_ino),
            PyLong_FromUnsignedLongLong(e->st.st_rdev),
            PyLong_FromUnsignedLongLong(e->st.st_nlink),
            cached_int(&cache[C_UID], e->st.st_uid),
            cached_int(&cache[C_GID], e->st.st_gid),
            PyLong_FromLongLong(e->st.st_size),
            PyLong_FromLongLong((long long)e->st.st_mtim.tv_sec * 1000000000LL
                                + e->st.st_mtim.tv_nsec),
            PyLong_FromLongLong(e->st.st_blocks),
            PyLong_FromLongLong(e->pos),
            cached_int(&cache[C_FLAGS], e->flags),
            e->mnt_id >= 0 ? cached_int(&cache[C_MNT], (unsigned long long)e->mnt_id)
                           : PyLong_FromLong(e->mnt_id),
            PyBytes_FromStringAndSize(e->info, (Py_ssize_t)e->info_len),
        };
        for (int k = 0; k < 16; k++) {
            if (!v[k]) {
                for (int j = k + 1; j < 16; j++) Py_XDECREF(v[j]);
                Py_DECREF(result);
                return NULL;
            }
            PyStructSequence_SET_ITEM(item, k, v[k]);
        }
    }
    return result;
}

/* The result of one scan as Python objects; NULL with an exception set on failure. */
static PyObject *scan_to_python(struct scan *s, const char *fd_dir) {
    struct int_cache cache[C_FIELDS];
    memset(cache, 0, sizeof cache);
    PyObject *result = scan_to_python_cached(s, fd_dir, cache);
    for (int f = 0; f < C_FIELDS; f++) int_cache_clear(&cache[f]);
    return result;
}

/* A descriptor or process id handed in from Python: an int in [lo, INT_MAX], so that
 * the C int or pid_t it becomes is the number Python meant (never a truncation of it). */
static int int_arg(PyObject *o, long lo, const char *what, int *out) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what, Py_TYPE(o)->tp_name);
        return -1;
    }
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < lo || v > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s out of range: %ld", what, v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static PyObject *read_table(PyObject *self, PyObject *args) {
    PyObject *fd_dir_obj, *info_dir_obj;
    if (!PyArg_ParseTuple(args, "O&O&", PyUnicode_FSConverter, &fd_dir_obj,
                          PyUnicode_FSConverter, &info_dir_obj))
        return NULL;
    const char *fd_dir = PyBytes_AS_STRING(fd_dir_obj);
    const char *info_dir = PyBytes_AS_STRING(info_dir_obj);
    struct scan s;
    init_scan(&s, 0, 0);

    Py_BEGIN_ALLOW_THREADS
    scan_table(fd_dir, info_dir, &s);
    Py_END_ALLOW_THREADS

    PyObject *result = scan_to_python(&s, fd_dir);
    free_scan(&s);
    Py_DECREF(fd_dir_obj);
    Py_DECREF(info_dir_obj);
    return result;
}

/* TableReader: one big table, listed, its fds read a piece at a time by read(n).
 *
 * So that the resolver works on one piece of a table while the next is being read: a
 * task of 10k fds would otherwise be read whole before its first fd is resolved, and the
 * two cores would never work on it together.  Made only by read_tables.  The listing is
 * the one taken when it was made: every piece reads fds of that listing, in its order,
 * as one read_table would (what a frozen task's table holds cannot change in between;
 * an unfrozen task's fd closed meanwhile is skipped, as read_table skips it). */
typedef struct {
    PyObject_HEAD
    struct scan s;
    PyObject *fd_dir;   /* bytes: what its errors name */
    int busy;           /* a read() is running without the GIL: another must not start */
} TableReader;

static void table_reader_dealloc(TableReader *self) {
    free_scan(&self->s);
    Py_XDECREF(self->fd_dir);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *table_reader_read(TableReader *self, PyObject *arg) {
    long limit = PyLong_AsLong(arg);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    if (limit < 1) {
        PyErr_SetString(PyExc_ValueError, "TableReader.read: n must be at least 1");
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "TableReader.read: already reading in another thread");
        return NULL;
    }
    if (self->s.dfd < 0) return PyList_New(0);  /* read to the end, failed or closed */
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    read_entries(&self->s, (size_t)limit);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyObject *rows = scan_to_python(&self->s, PyBytes_AS_STRING(self->fd_dir));
    free_entries(&self->s);
    return rows;
}

static PyObject *table_reader_close(TableReader *self, PyObject *unused) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "TableReader.close: a read is running in another thread");
        return NULL;
    }
    close_dirs(&self->s);
    Py_RETURN_NONE;
}

static PyObject *table_reader_listed(TableReader *self, void *unused) {
    return PyLong_FromSize_t(self->s.nfds);
}

static PyObject *table_reader_left(TableReader *self, void *unused) {
    return PyLong_FromSize_t(self->s.dfd < 0 ? 0 : self->s.nfds - self->s.next);
}

static PyMethodDef table_reader_methods[] = {
    {"read", (PyCFunction)table_reader_read, METH_O,
     "read(n) -> the rows of the next n fds of the listing (fewer at its end, [] after"
     " it), as read_tables gives a table's; the GIL is released while reading.  A failure"
     " raises OSError and ends the table."},
    {"close", (PyCFunction)table_reader_close, METH_NOARGS,
     "close(): release the table's directories; read() then gives []."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef table_reader_getset[] = {
    {"listed", (getter)table_reader_listed, NULL, "fds in the table's listing", NULL},
    {"left", (getter)table_reader_left, NULL, "fds of the listing not read yet", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject table_reader_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asyckpt._fdscan.TableReader",
    .tp_basicsize = sizeof(TableReader),
    .tp_dealloc = (destructor)table_reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One fd table, listed, read a piece at a time (made by read_tables).",
    .tp_methods = table_reader_methods,
    .tp_getset = table_reader_getset,
};

/* read_tables([(fd_dir, fdinfo_dir), ...], parents=None, piece=0) -> [list | OSError, ...]
 *
 * Every table with one release of the GIL.  Getting the GIL back is what a scanner
 * thread waits for while the resolver runs Python (up to the interpreter's switch
 * interval each time), so a chunk of tasks pays that wait once, not once per task.  A
 * table that cannot be read gives its OSError in its place, unraised.
 *
 * parents, if given, has one (parent_pid, tid) per table, or None: an fd of table i that
 * kcmp finds shared with parent_pid's fd of the same number comes back as the short row
 * (fd, flags), to be resolved from the parent's row (see read_entries).  Only for a frozen
 * tree, whose parent's table cannot change between the two reads.
 *
 * piece > 0: the first table that lists more than piece fds is given as a TableReader
 * (listed, none of its fds read), and the result stops there: the caller reads it, then
 * asks again for the tables after it.  So at most one table is held open per call. */
static PyObject *read_tables(PyObject *self, PyObject *args) {
    PyObject *arg, *parents_arg = Py_None, *parents = NULL;
    Py_ssize_t piece = 0;
    if (!PyArg_ParseTuple(args, "O|On:read_tables", &arg, &parents_arg, &piece)) return NULL;
    if (piece < 0) {
        PyErr_SetString(PyExc_ValueError, "read_tables: piece must not be negative");
        return NULL;
    }
    /* Copies, not PySequence_Fast views: converting a path may run Python code
     * (__fspath__), which could shrink a list being indexed. */
    PyObject *seq = PySequence_Tuple(arg);
    if (!seq) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq), big = -1;
    PyObject **paths = calloc((size_t)(2 * n + 1), sizeof *paths);
    struct scan *scans = calloc((size_t)n + 1, sizeof *scans);
    const char **dirs = calloc((size_t)(2 * n + 1), sizeof *dirs);
    PyObject *result = NULL;
    if (!paths || !scans || !dirs) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) init_scan(&scans[i], 0, 0);
    if (parents_arg != Py_None) {
        parents = PySequence_Tuple(parents_arg);
        if (!parents) goto done;
        if (PyTuple_GET_SIZE(parents) != n) {
            PyErr_SetString(PyExc_ValueError, "parents must have one entry per table");
            goto done;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *pair = PyTuple_GET_ITEM(parents, i);
            int parent, tid;
            if (pair == Py_None) continue;
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "parents: each is None or (parent_pid, tid)");
                goto done;
            }
            if (int_arg(PyTuple_GET_ITEM(pair, 0), 0, "parent pid", &parent) < 0
                || int_arg(PyTuple_GET_ITEM(pair, 1), 0, "tid", &tid) < 0)
                goto done;
            init_scan(&scans[i], parent, tid);
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "read_tables: each table is (fd_dir, fdinfo_dir)");
            goto done;
        }
        if (!PyArg_ParseTuple(pair, "O&O&", PyUnicode_FSConverter, &paths[2 * i],
                              PyUnicode_FSConverter, &paths[2 * i + 1]))
            goto done;
        dirs[2 * i] = PyBytes_AS_STRING(paths[2 * i]);
        dirs[2 * i + 1] = PyBytes_AS_STRING(paths[2 * i + 1]);
    }

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        list_table(dirs[2 * i], dirs[2 * i + 1], &scans[i]);
        if (!scans[i].err && piece > 0 && scans[i].nfds > (size_t)piece) {
            big = i;
            break;
        }
        if (!scans[i].err) read_entries(&scans[i], 0);
        close_dirs(&scans[i]);
    }
    Py_END_ALLOW_THREADS

    Py_ssize_t got = big >= 0 ? big + 1 : n;
    result = PyList_New(got);
    if (!result) goto done;
    for (Py_ssize_t i = 0; i < got; i++) {
        PyObject *item;
        if (i == big) {
            TableReader *reader = PyObject_New(TableReader, &table_reader_type);
            if (!reader) { Py_CLEAR(result); goto done; }
            reader->s = scans[i];  /* moved: the reader frees it */
            init_scan(&scans[i], 0, 0);
            reader->busy = 0;
            reader->fd_dir = Py_NewRef(paths[2 * i]);
            PyList_SET_ITEM(result, i, (PyObject *)reader);
            continue;
        }
        item = scan_to_python(&scans[i], dirs[2 * i]);
        if (!item) {
            if (!PyErr_ExceptionMatches(PyExc_OSError)) { Py_CLEAR(result); goto done; }
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            Py_XDECREF(type);
            Py_XDECREF(tb);
            item = value;
        }
        PyList_SET_ITEM(result, i, item);
    }
done:
    if (scans) for (Py_ssize_t i = 0; i < n; i++) free_scan(&scans[i]);
    if (paths) for (Py_ssize_t i = 0; i < 2 * n; i++) Py_XDECREF(paths[i]);
    free(scans);
    free(paths);
    free(dirs);
    Py_XDECREF(parents);
    Py_DECREF(seq);
    return result;
}

#ifndef SYS_kcmp
#include <sys/syscall.h>
#endif

/* kcmp_files((pid1, fd1), (pid2, fd2)) -> 0 same open file description, 1 less, 2 greater.
 * The deduplication's comparison, called tens of thousands of times per capture: through
 * ctypes it costs several times the syscall itself. */
static PyObject *kcmp_files(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[0]) || !PyTuple_Check(args[1])
        || PyTuple_GET_SIZE(args[0]) != 2 || PyTuple_GET_SIZE(args[1]) != 2) {
        PyErr_SetString(PyExc_TypeError, "kcmp_files((pid, fd), (pid, fd))");
        return NULL;
    }
    int p1, f1, p2, f2;
    if (int_arg(PyTuple_GET_ITEM(args[0], 0), 0, "pid", &p1) < 0
        || int_arg(PyTuple_GET_ITEM(args[0], 1), 0, "fd", &f1) < 0
        || int_arg(PyTuple_GET_ITEM(args[1], 0), 0, "pid", &p2) < 0
        || int_arg(PyTuple_GET_ITEM(args[1], 1), 0, "fd", &f2) < 0)
        return NULL;
    long r = syscall(SYS_kcmp, (pid_t)p1, (pid_t)p2, 0 /* KCMP_FILE */, (long)f1, (long)f2);
    if (r < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(r);
}

/* kcmp(pid1, pid2, type, idx1, idx2) -> 0, 1 or 2: the syscall for any type but
 * KCMP_EPOLL_TFD (whose last argument is a pointer).  _kernel.kcmp's, called for every
 * task of a frozen tree to group fd tables (KCMP_FILES): through ctypes each call cost
 * several times the syscall. */
static PyObject *kcmp_any(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "kcmp(pid1, pid2, type, idx1, idx2)");
        return NULL;
    }
    int p1, p2, type, i1, i2;
    if (int_arg(args[0], 0, "pid1", &p1) < 0 || int_arg(args[1], 0, "pid2", &p2) < 0
        || int_arg(args[2], 0, "type", &type) < 0 || int_arg(args[3], 0, "idx1", &i1) < 0
        || int_arg(args[4], 0, "idx2", &i2) < 0)
        return NULL;
    if (type == 7 /* KCMP_EPOLL_TFD */) {
        PyErr_SetString(PyExc_ValueError, "kcmp: KCMP_EPOLL_TFD takes a slot, not an index");
        return NULL;
    }
    long r = syscall(SYS_kcmp, (pid_t)p1, (pid_t)p2, type, (long)i1, (long)i2);
    if (r < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(r);
}

/* The I/O owner of an open file description: F_GETOWN_EX and F_GETSIG, and, only when
 * an owner is set, F_GETOWNER_UIDS (EINVAL without CONFIG_CHECKPOINT_RESTORE: no uids).
 * One call for the two or three fcntls, read once per description while the tree is
 * frozen.  Returns (type, pid, sig, uid, euid), uid and euid None when not read. */
#ifndef F_GETOWNER_UIDS
#define F_GETOWNER_UIDS 17
#endif

static PyObject *owner_tuple(int fd) {
    struct f_owner_ex owner = {0};
    unsigned int uids[2];
    int sig, have_uids = 0;
    if (fcntl(fd, F_GETOWN_EX, &owner) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    sig = fcntl(fd, F_GETSIG);
    if (sig < 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (owner.pid != 0) {
        if (fcntl(fd, F_GETOWNER_UIDS, uids) == 0) have_uids = 1;
        else if (errno != EINVAL) return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (!have_uids) return Py_BuildValue("iiiOO", (int)owner.type, owner.pid, sig, Py_None, Py_None);
    return Py_BuildValue("iiiII", (int)owner.type, owner.pid, sig, uids[0], uids[1]);
}

/* fd_owner(fd) -> (type, pid, sig, uid, euid): on a descriptor of ours. */
static PyObject *fd_owner(PyObject *self, PyObject *arg) {
    int fd;
    if (int_arg(arg, 0, "fd", &fd) < 0) return NULL;
    return owner_tuple(fd);
}

/* fd_owner_at(pidfd, fd) -> the same, for the task's fd: pidfd_getfd(2), so the same open
 * file description (never a re-open), read, closed.  For descriptions no handler took. */
static PyObject *fd_owner_at(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "fd_owner_at(pidfd, fd)");
        return NULL;
    }
    int pidfd, target;
    if (int_arg(args[0], 0, "pidfd", &pidfd) < 0 || int_arg(args[1], 0, "fd", &target) < 0)
        return NULL;
    int fd = (int)syscall(438 /* SYS_pidfd_getfd, the same on every architecture */,
                          pidfd, target, 0);
    if (fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *result = owner_tuple(fd);
    close(fd);
    return result;
}

/* --- dedup_rows: RecordBuilder._resolve_table's per-fd loop, for a frozen tree ------- */

static PyObject *list_of_two(PyObject *a, PyObject *b) {
    PyObject *list = PyList_New(2);
    if (!list) return NULL;
    Py_INCREF(a);
    PyList_SET_ITEM(list, 0, a);
    Py_INCREF(b);
    PyList_SET_ITEM(list, 1, b);
    return list;
}

/* A (pid, fd) reference as the dedup structures hold it: an exact 2-tuple of exact ints
 * that fit a pid_t and an int.  Exact types, so that reading one runs no Python code. */
static int ref_values(PyObject *ref, long *pid, long *fd) {
    if (!PyTuple_CheckExact(ref) || PyTuple_GET_SIZE(ref) != 2
        || !PyLong_CheckExact(PyTuple_GET_ITEM(ref, 0))
        || !PyLong_CheckExact(PyTuple_GET_ITEM(ref, 1))) {
        PyErr_SetString(PyExc_TypeError, "dedup_rows: a reference is a (pid, fd) tuple of ints");
        return -1;
    }
    *pid = PyLong_AsLong(PyTuple_GET_ITEM(ref, 0));
    if (*pid == -1 && PyErr_Occurred()) return -1;
    *fd = PyLong_AsLong(PyTuple_GET_ITEM(ref, 1));
    if (*fd == -1 && PyErr_Occurred()) return -1;
    if (*pid < 1 || *pid > INT_MAX || *fd < 0 || *fd > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "dedup_rows: reference (%ld, %ld) out of range", *pid, *fd);
        return -1;
    }
    return 0;
}

/* kcmp(KCMP_FILE) of (tid, fd) against a validated (pid, fd) ref; -1 with *epid, *efd
 * set (the ref's, as _kernel.kcmp_files names them) and errno on failure. */
static long kcmp_ref(long tid, long fd, long p, long f, long *epid, long *efd) {
    long r = syscall(SYS_kcmp, (pid_t)tid, (pid_t)p, 0 /* KCMP_FILE */, fd, f);
    if (r < 0) { *epid = p; *efd = f; }
    return r;
}

/* A description seen before, through an fd whose fdinfo lists locks: its fdinfo rest is
 * appended to more_locks[file_id], as the Python loop does (a lock shows only in the
 * fdinfo of its owner's fds, so the first fd's lines may not hold them all). */
static int remember_locks(PyObject *more_locks, PyObject *file_id, PyObject *row) {
    PyObject *rest = PyTuple_GET_ITEM(row, 15);
    if (!has_lock_line(PyBytes_AS_STRING(rest), (size_t)PyBytes_GET_SIZE(rest)))
        return 0;
    PyObject *list = PyDict_GetItemWithError(more_locks, file_id);
    if (!list) {
        if (PyErr_Occurred()) return -1;
        list = PyList_New(0);
        if (!list) return -1;
        int rc = PyDict_SetItem(more_locks, file_id, list);
        Py_DECREF(list);
        if (rc < 0) return -1;
        return PyList_Append(list, rest);  /* kept alive by the dict: no code ran since */
    }
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "dedup_rows: more_locks values are lists");
        return -1;
    }
    return PyList_Append(list, rest);
}

/* The shape of one scan row, checked before anything reads it: an exact tuple or one of
 * the two row types above (not subclassable, so no Python code runs on them), either
 * (fd, flags) or the 16 fields of read_table, with exact ints where the loop reads
 * numbers or builds dict keys (a subclass could run Python code in __hash__ or __eq__)
 * and bytes for the fdinfo rest.  Sets *fd. */
static int check_row(PyObject *row, long *fd) {
    static const int ints16[] = {0, 3, 4, 12, 13};
    if (!(PyTuple_CheckExact(row) || Py_IS_TYPE(row, asyckpt_fd_row_type) || Py_IS_TYPE(row, inherited_fd_type))
        || (PyTuple_GET_SIZE(row) != 2 && PyTuple_GET_SIZE(row) != 16)) {
        PyErr_SetString(PyExc_TypeError, "dedup_rows: a row is a 2- or 16-tuple");
        return -1;
    }
    if (PyTuple_GET_SIZE(row) == 2) {
        if (!PyLong_CheckExact(PyTuple_GET_ITEM(row, 0)) || !PyLong_CheckExact(PyTuple_GET_ITEM(row, 1))) {
            PyErr_SetString(PyExc_TypeError, "dedup_rows: a short row is (fd, flags), two ints");
            return -1;
        }
    } else {
        for (size_t k = 0; k < sizeof ints16 / sizeof *ints16; k++) {
            if (!PyLong_CheckExact(PyTuple_GET_ITEM(row, ints16[k]))) {
                PyErr_Format(PyExc_TypeError, "dedup_rows: field %d of a row must be an int",
                             ints16[k]);
                return -1;
            }
        }
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(row, 15))) {
            PyErr_SetString(PyExc_TypeError, "dedup_rows: field 15 of a row must be bytes");
            return -1;
        }
    }
    *fd = PyLong_AsLong(PyTuple_GET_ITEM(row, 0));
    if (*fd == -1 && PyErr_Occurred()) return -1;
    if (*fd < 0 || *fd > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "dedup_rows: fd %ld out of range", *fd);
        return -1;
    }
    return 0;
}

/* A parent's hint, (key, ref, file_id): an exact 3-tuple whose ref is valid. */
static int check_hint(PyObject *hint, long *pid, long *fd) {
    if (!PyTuple_CheckExact(hint) || PyTuple_GET_SIZE(hint) != 3) {
        PyErr_SetString(PyExc_TypeError, "dedup_rows: a hint is a (key, ref, file_id) tuple");
        return -1;
    }
    return ref_values(PyTuple_GET_ITEM(hint, 1), pid, fd);
}

/* dedup_rows(rows, tid, hints, seen, buckets, file_count, more_locks=None)
 *   -> (entries, new, file_count, hint_hits, compares, error)
 *
 * The loop of _build.RecordBuilder._resolve_table, without the interpreter: for each row
 * (ScanRow) of one table, the cheap key, the parent's hint (same key, then kcmp), else
 * the KcmpIndex bucket of the key (binary search in kcmp order), in the same Python
 * structures the Python loop uses, so the two can take turns.  entries holds
 * (fd, cloexec, file_id, None) per row; new, the indexes of the rows whose description
 * is new (their ids handed out in row order from file_count + 1), for the caller to
 * build.  A kcmp failure stops the loop: error is then (errno, pid, fd) of the other
 * side, as the Python loop's comparison would report it.  more_locks, if given, gathers
 * the lock lines of fds of descriptions seen before (see remember_locks).
 *
 * Every shape is checked before it is read (TypeError, ValueError), so no argument can
 * crash the interpreter.  The rows are read from a copy of the list, and every object
 * borrowed from a dict is held while used: a dict lookup may run Python code (a stored
 * key's __eq__), which may change the dicts and lists it was handed. */
static PyObject *dedup_rows(PyObject *self, PyObject *args) {
    PyObject *rows_arg, *hints, *seen, *buckets, *more_locks = NULL;
    long tid;
    long long count;
    if (!PyArg_ParseTuple(args, "O!lO!O!O!L|O!:dedup_rows", &PyList_Type, &rows_arg, &tid,
                          &PyDict_Type, &hints, &PyDict_Type, &seen, &PyDict_Type, &buckets,
                          &count, &PyDict_Type, &more_locks))
        return NULL;
    if (tid < 1 || tid > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "dedup_rows: tid %ld out of range", tid);
        return NULL;
    }
    PyObject *rows = PyList_AsTuple(rows_arg);
    if (!rows) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(rows);
    if (count < 0 || count > LLONG_MAX - n) {
        PyErr_SetString(PyExc_ValueError, "dedup_rows: file_count out of range");
        Py_DECREF(rows);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd;
        if (check_row(PyTuple_GET_ITEM(rows, i), &fd) < 0) { Py_DECREF(rows); return NULL; }
    }
    long long hits = 0, compares = 0;
    PyObject *entries = PyList_New(n), *fresh = PyList_New(0), *error = NULL;
    PyObject *key = NULL, *ref = NULL, *file_id = NULL, *hint = NULL, *bucket = NULL;
    /* One tid object for every ref this call makes (a description's ref is kept until
     * the capture's end: 32 bytes each, for a tid over 256, when made per ref). */
    PyObject *tid_obj = PyLong_FromLong(tid);
    if (!entries || !fresh || !tid_obj) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyTuple_GET_ITEM(rows, i);
        PyObject *fd_obj = PyTuple_GET_ITEM(row, 0);
        long fd = PyLong_AsLong(fd_obj), hpid = 0, hfd = 0;
        int is_new = 0;
        hint = PyDict_GetItemWithError(hints, fd_obj);
        if (!hint && PyErr_Occurred()) goto fail;
        Py_XINCREF(hint);
        if (hint && check_hint(hint, &hpid, &hfd) < 0) goto fail;
        if (PyTuple_GET_SIZE(row) == 2) {
            unsigned long flags = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(row, 1));
            if (PyErr_Occurred()) goto fail;
            if (!hint) {
                PyErr_Format(PyExc_RuntimeError,
                             "asyckpt bug: fd %ld of %ld has no parent row", fd, tid);
                goto fail;
            }
            key = PyTuple_GET_ITEM(hint, 0);
            Py_INCREF(key);
            file_id = PyTuple_GET_ITEM(hint, 2);
            Py_INCREF(file_id);
            hits++;
            PyObject *item = Py_BuildValue("(OOOO)", fd_obj, (flags & O_CLOEXEC) ? Py_True : Py_False,
                                           file_id, Py_None);
            if (!item) goto fail;
            PyList_SET_ITEM(entries, i, item);
        } else {
            unsigned long flags = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(row, 13));
            if (PyErr_Occurred()) goto fail;
            int cloexec = (flags & O_CLOEXEC) != 0;
            flags &= ~(unsigned long)O_CLOEXEC;
            /* Without close-on-exec the row's own flags object is the key's (held to the
             * capture's end by the index: no int of its own per description). */
            if (cloexec)
                key = Py_BuildValue("(OOOk)", PyTuple_GET_ITEM(row, 3), PyTuple_GET_ITEM(row, 4),
                                    PyTuple_GET_ITEM(row, 12), flags);
            else
                key = PyTuple_Pack(4, PyTuple_GET_ITEM(row, 3), PyTuple_GET_ITEM(row, 4),
                                   PyTuple_GET_ITEM(row, 12), PyTuple_GET_ITEM(row, 13));
            if (!key) goto fail;
            long epid = 0, efd = 0;
            if (hint) {
                int same_key = PyObject_RichCompareBool(PyTuple_GET_ITEM(hint, 0), key, Py_EQ);
                if (same_key < 0) goto fail;
                if (same_key) {
                    long r = kcmp_ref(tid, fd, hpid, hfd, &epid, &efd);
                    if (r < 0) goto kcmp_failed;
                    if (r == 0) {
                        file_id = PyTuple_GET_ITEM(hint, 2);
                        Py_INCREF(file_id);
                        hits++;
                    }
                }
            }
            if (!file_id) {
                bucket = PyDict_GetItemWithError(buckets, key);
                if (!bucket && PyErr_Occurred()) goto fail;
                Py_XINCREF(bucket);
                /* A bucket of one is its (ref, file_id) entry itself (KcmpIndex). */
                int single = bucket && PyTuple_CheckExact(bucket);
                if (bucket && !single && !PyList_CheckExact(bucket)) {
                    PyErr_SetString(PyExc_TypeError,
                                    "dedup_rows: a bucket is a list or a (ref, file_id) tuple");
                    goto fail;
                }
                /* No Python code runs from here to the insertion: the bucket keeps its size. */
                Py_ssize_t lo = 0, hi = bucket ? (single ? 1 : PyList_GET_SIZE(bucket)) : 0;
                while (lo < hi) {
                    Py_ssize_t mid = lo + (hi - lo) / 2;
                    PyObject *entry = single ? bucket : PyList_GET_ITEM(bucket, mid);
                    long p, f;
                    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2) {
                        PyErr_SetString(PyExc_TypeError,
                                        "dedup_rows: a bucket entry is a (ref, file_id) tuple");
                        goto fail;
                    }
                    if (ref_values(PyTuple_GET_ITEM(entry, 0), &p, &f) < 0) goto fail;
                    compares++;
                    long r = kcmp_ref(tid, fd, p, f, &epid, &efd);
                    if (r < 0) goto kcmp_failed;
                    if (r == 0) {
                        file_id = PyTuple_GET_ITEM(entry, 1);
                        Py_INCREF(file_id);
                        break;
                    }
                    if (r == 1) hi = mid;
                    else if (r == 2) lo = mid + 1;
                    else {
                        PyErr_Format(PyExc_ValueError, "compare returned %ld, expected 0, 1 or 2", r);
                        goto fail;
                    }
                }
                if (!file_id) {
                    is_new = 1;
                    file_id = PyLong_FromLongLong(++count);
                    if (!file_id) goto fail;
                    /* The same ref is kept in seen below: one tuple for both. */
                    ref = PyTuple_Pack(2, tid_obj, fd_obj);
                    PyObject *stored = ref ? PyTuple_Pack(2, ref, file_id) : NULL;
                    if (!stored) goto fail;
                    int rc;
                    if (!bucket) {
                        rc = PyDict_SetItem(buckets, key, stored);
                    } else if (single) {
                        PyObject *pair_bucket = lo == 0 ? list_of_two(stored, bucket)
                                                        : list_of_two(bucket, stored);
                        if (!pair_bucket) { Py_DECREF(stored); goto fail; }
                        rc = PyDict_SetItem(buckets, key, pair_bucket);
                        Py_DECREF(pair_bucket);
                    } else {
                        rc = PyList_Insert(bucket, lo, stored);
                    }
                    Py_DECREF(stored);
                    if (rc < 0) goto fail;
                }
                Py_CLEAR(bucket);
            }
            PyObject *item = Py_BuildValue("(OOOO)", fd_obj, cloexec ? Py_True : Py_False,
                                           file_id, Py_None);
            if (!item) goto fail;
            PyList_SET_ITEM(entries, i, item);
            if (!is_new && more_locks && remember_locks(more_locks, file_id, row) < 0) goto fail;
            goto resolved;
        kcmp_failed:
            error = Py_BuildValue("(ill)", errno, epid, efd);
            Py_CLEAR(key);
            Py_CLEAR(entries);
            Py_CLEAR(hint);
            Py_CLEAR(bucket);
            if (!error) goto fail;
            break;
        }
    resolved:
        if (!ref) ref = PyTuple_Pack(2, tid_obj, fd_obj);
        if (!ref) goto fail;
        {
            PyObject *mine = PyTuple_Pack(3, key, ref, file_id);
            if (!mine) goto fail;
            int rc = PyDict_SetItem(seen, fd_obj, mine);
            Py_DECREF(mine);
            if (rc < 0) goto fail;
        }
        if (is_new) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (!index || PyList_Append(fresh, index) < 0) { Py_XDECREF(index); goto fail; }
            Py_DECREF(index);
        }
        Py_CLEAR(key);
        Py_CLEAR(ref);
        Py_CLEAR(file_id);
        Py_CLEAR(hint);
    }
    Py_DECREF(rows);
    Py_DECREF(tid_obj);
    if (error) {
        PyObject *result = Py_BuildValue("(OOLLLN)", Py_None, Py_None, count, hits, compares, error);
        Py_DECREF(fresh);
        return result;
    }
    return Py_BuildValue("(NNLLLO)", entries, fresh, count, hits, compares, Py_None);
fail:
    Py_XDECREF(key);
    Py_XDECREF(ref);
    Py_XDECREF(file_id);
    Py_XDECREF(hint);
    Py_XDECREF(bucket);
    Py_XDECREF(entries);
    Py_XDECREF(fresh);
    Py_XDECREF(tid_obj);
    Py_DECREF(rows);
    return NULL;
}

/* --- read_task: what the tree walk and the fd-table plan read of one task ------------ */

/* The whole of a /proc file, however long (a task's children list, its maps: neither has
 * a bound), in a buffer of at least ``cap`` bytes to begin with; -1 with errno set. */
int asyckpt_read_whole(const char *path, size_t cap, char **out, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t n = 0;
    char *buf = malloc(cap);
    if (!buf) { close(fd); errno = ENOMEM; return -1; }
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) { int e = errno; free(buf); close(fd); errno = e; return -1; }
        if (r == 0) break;
        n += (size_t)r;
        if (n == cap) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) { free(buf); close(fd); errno = ENOMEM; return -1; }
            buf = bigger;
            cap *= 2;
        }
    }
    close(fd);
    *out = buf;
    *len = n;
    return 0;
}

struct task_read {
    char *stat;
    size_t stat_len;
    int *tids;
    size_t ntids, tids_cap;
    long *children;
    size_t nchildren, children_cap;
    struct stat st;         /* of /proc/PID: the task's owner */
    char root[PATH_MAX + 1];
    ssize_t root_len;       /* -1: a zombie (no root, no namespaces) */
    unsigned long long mnt_ns;
    int err;
    char err_path[64];
};

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static void task_failed(struct task_read *t, const char *path) {
    t->err = errno;
    snprintf(t->err_path, sizeof t->err_path, "%s", path);
}

/* What _procread.read_stat, list_threads, list_children and read_task_meta read, in
 * that order and with their rules: a thread that exits while its children are read is
 * skipped; a zombie has no root and no mount namespace. */
static void scan_task(int pid, struct task_read *t) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (asyckpt_read_whole(path, 1024, &t->stat, &t->stat_len) < 0) {
        task_failed(t, path);
        return;
    }

    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d) { task_failed(t, path); return; }
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
        if (t->ntids == t->tids_cap) {
            size_t cap = t->tids_cap ? t->tids_cap * 2 : 16;
            int *more = realloc(t->tids, cap * sizeof *more);
            if (!more) { errno = ENOMEM; break; }
            t->tids = more;
            t->tids_cap = cap;
        }
        t->tids[t->ntids++] = atoi(de->d_name);
        errno = 0;
    }
    int saved = errno;
    closedir(d);
    if (saved) { errno = saved; task_failed(t, path); return; }
    qsort(t->tids, t->ntids, sizeof *t->tids, cmp_int);

    for (size_t i = 0; i < t->ntids; i++) {
        char *text;
        size_t len;
        snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, t->tids[i]);
        if (asyckpt_read_whole(path, 1024, &text, &len) < 0) {
            if (errno == ENOENT || errno == ESRCH) continue;  /* the thread exited */
            task_failed(t, path);
            return;
        }
        const char *p = text, *end = text + len;
        while (p < end) {
            if (*p < '0' || *p > '9') { p++; continue; }
            long child = 0;
            while (p < end && *p >= '0' && *p <= '9' && child < INT_MAX) child = child * 10 + (*p++ - '0');
            if (t->nchildren == t->children_cap) {
                size_t cap = t->children_cap ? t->children_cap * 2 : 16;
                long *more = realloc(t->children, cap * sizeof *more);
                if (!more) { free(text); errno = ENOMEM; task_failed(t, path); return; }
                t->children = more;
                t->children_cap = cap;
            }
            t->children[t->nchildren++] = child;
        }
        free(text);
    }
    qsort(t->children, t->nchildren, sizeof *t->children, cmp_long);
    size_t kept = 0;  /* unique: children of two threads are one list */
    for (size_t i = 0; i < t->nchildren; i++)
        if (!kept || t->children[kept - 1] != t->children[i]) t->children[kept++] = t->children[i];
    t->nchildren = kept;

    snprintf(path, sizeof path, "/proc/%d", pid);
    if (stat(path, &t->st) < 0) { task_failed(t, path); return; }
    snprintf(path, sizeof path, "/proc/%d/root", pid);
    t->root_len = readlink(path, t->root, PATH_MAX);
    if (t->root_len < 0) {
        if (errno == ENAMETOOLONG) t->root_len = 0;
        else if (errno == ENOENT) { t->root_len = -1; return; }
        else { task_failed(t, path); return; }
    }
    struct stat ns;
    snprintf(path, sizeof path, "/proc/%d/ns/mnt", pid);
    if (stat(path, &ns) < 0) {
        if (errno == ENOENT) { t->root_len = -1; return; }
        task_failed(t, path);
        return;
    }
    t->mnt_ns = (unsigned long long)ns.st_ino;
}

static PyObject *int_list(const void *items, size_t n, int is_long) {
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) return NULL;
    for (size_t i = 0; i < n; i++) {
        long v = is_long ? ((const long *)items)[i] : ((const int *)items)[i];
        PyObject *o = PyLong_FromLong(v);
        if (!o) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, (Py_ssize_t)i, o);
    }
    return list;
}

/* read_task(pid) -> (stat: bytes, tids, children, uid, gid, root: str | None, mnt_ns)
 *
 * What the tree walk and the fd-table plan read of a task, with the GIL released for
 * all of it: while the tree is frozen they are read for every task, about ten syscalls
 * each, which through the interpreter cost several times their kernel time on a tree of
 * hundreds of small tasks.  tids and children sorted, children unique; root None for a
 * zombie (its mnt_ns 0).  A failure raises OSError naming the file. */
static PyObject *read_task(PyObject *self, PyObject *arg) {
    int pid;
    if (int_arg(arg, 1, "pid", &pid) < 0) return NULL;
    struct task_read *t = calloc(1, sizeof *t);
    if (!t) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    scan_task(pid, t);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (t->err) {
        errno = t->err;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, t->err_path);
    } else {
        PyObject *root = t->root_len < 0 ? Py_NewRef(Py_None)
                                         : PyUnicode_DecodeFSDefaultAndSize(t->root, t->root_len);
        PyObject *tids = int_list(t->tids, t->ntids, 0);
        PyObject *children = int_list(t->children, t->nchildren, 1);
        if (root && tids && children)
            result = Py_BuildValue("(y#OOkkOK)", t->stat, (Py_ssize_t)t->stat_len, tids, children,
                                   (unsigned long)t->st.st_uid, (unsigned long)t->st.st_gid, root,
                                   t->root_len < 0 ? 0ULL : t->mnt_ns);
        Py_XDECREF(root);
        Py_XDECREF(tids);
        Py_XDECREF(children);
    }
    free(t->stat);
    free(t->tids);
    free(t->children);
    free(t);
    return result;
}

#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/* pidfd_getfd(pidfd, fd) -> a new fd (close-on-exec) for the same open file description.
 * Called once per pipe, socket and O_PATH symlink a capture meets, while the tree is
 * frozen: through ctypes the call costs more than the syscall. */
static PyObject *pidfd_getfd(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pidfd_getfd(pidfd, fd)");
        return NULL;
    }
    int pidfd, fd;
    if (int_arg(args[0], 0, "pidfd", &pidfd) < 0 || int_arg(args[1], 0, "fd", &fd) < 0)
        return NULL;
    long r = syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    if (r < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(r);
}

static PyMethodDef methods[] = {
    {"dedup_rows", dedup_rows, METH_VARARGS,
     "dedup_rows(rows, tid, hints, seen, buckets, file_count, more_locks=None) -> (entries,"
     " new, file_count,"
     " hint_hits, compares, error): RecordBuilder._resolve_table's dedup loop in C."},
    {"pidfd_getfd", (PyCFunction)(void (*)(void))pidfd_getfd, METH_FASTCALL,
     "pidfd_getfd(pidfd, fd) -> a duplicate of the pidfd's task's fd (pidfd_getfd(2))"},
    {"read_tables", read_tables, METH_VARARGS,
     "read_tables([(fd_dir, fdinfo_dir), ...], parents=None, piece=0) -> [rows or OSError,"
     " ...]: read_table for each, with a single release of the GIL; with parents, one"
     " (parent_pid, tid) or None per table, an fd shared with the parent's same fd is the"
     " short row (fd, flags); with piece, the first table of more fds is a TableReader,"
     " and the last item."},
    {"read_task", read_task, METH_O,
     "read_task(pid) -> (stat, tids, children, uid, gid, root, mnt_ns): a task's stat"
     " text, threads, children, owner, root (None for a zombie) and mount namespace,"
     " with the GIL released."},
    {"kcmp", (PyCFunction)(void (*)(void))kcmp_any, METH_FASTCALL,
     "kcmp(pid1, pid2, type, idx1, idx2) -> kcmp(2) for any type but KCMP_EPOLL_TFD"},
    {"kcmp_files", (PyCFunction)(void (*)(void))kcmp_files, METH_FASTCALL,
     "kcmp_files((pid1, fd1), (pid2, fd2)) -> kcmp(pid1, pid2, KCMP_FILE, fd1, fd2)"},
    {"fd_owner", fd_owner, METH_O,
     "fd_owner(fd) -> (type, pid, sig, uid, euid): F_GETOWN_EX, F_GETSIG, and"
     " F_GETOWNER_UIDS when an owner is set (else uid and euid are None)."},
    {"fd_owner_at", (PyCFunction)(void (*)(void))fd_owner_at, METH_FASTCALL,
     "fd_owner_at(pidfd, fd) -> fd_owner of the task's fd, through pidfd_getfd(2)."},
    {"read_task_files", asyckpt_read_task_files, METH_VARARGS,
     "read_task_files(pid, tids, known, cmdline) -> (cwd, root, exe, namespaces, maps, keys,"
     " mapped, threads, cmdline): a task's files held by reference (_rows.TaskFilesRow), the GIL"
     " released but while the mapped files to read are picked from the set known."},
    {"parse_maps", asyckpt_parse_maps, METH_O,
     "parse_maps(data) -> [MapRow]: /proc/PID/maps parsed (ValueError when malformed)."},
    {"read_table", read_table, METH_VARARGS,
     "read_table(fd_dir, fdinfo_dir) -> [(fd, link, mode, dev, ino, rdev, nlink, uid, gid,"
     " size, mtime_ns, blocks, pos, flags, mnt_id, fdinfo_rest)], ascending fd; the GIL is"
     " released while reading."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "asyckpt._fdscan",
    "Read an fd table from /proc without holding the GIL.", -1, methods,
};

/* A struct sequence's fields are T_OBJECT members, which CPython 3.11 does not
 * specialize (LOAD_ATTR_SLOT is for T_OBJECT_EX only): each row.name would take the
 * generic attribute lookup, slower than an index.  Every field of these rows is always
 * set (the reader fills all, the type's constructor takes exactly all), so T_OBJECT_EX,
 * which differs only for an unset field, reads the same and is specialized. */
static PyTypeObject *fast_members(PyTypeObject *type) {
    if (type && type->tp_members) {
        for (PyMemberDef *m = type->tp_members; m->name; m++)
            if (m->type == T_OBJECT) m->type = T_OBJECT_EX;
        PyType_Modified(type);
    }
    return type;
}

PyMODINIT_FUNC PyInit__fdscan(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (!asyckpt_fd_row_type) asyckpt_fd_row_type = fast_members(PyStructSequence_NewType(&fd_row_desc));
    if (!inherited_fd_type)
        inherited_fd_type = fast_members(PyStructSequence_NewType(&inherited_fd_desc));
    if (!asyckpt_fd_row_type || !inherited_fd_type || PyType_Ready(&table_reader_type) < 0
        || PyModule_AddObjectRef(m, "TableReader", (PyObject *)&table_reader_type) < 0
        || PyModule_AddObjectRef(m, "FdRow", (PyObject *)asyckpt_fd_row_type) < 0
        || PyModule_AddObjectRef(m, "InheritedFd", (PyObject *)inherited_fd_type) < 0
        || asyckpt_taskfiles_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

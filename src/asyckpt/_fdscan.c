/*
 * asyckpt._fdscan: read one fd table (readlink + stat + fdinfo per fd) without the GIL.
 *
 * The pure-Python reader (_procread.py) costs ~13 us per fd, most of it interpreter
 * overhead around five syscalls, and two Python threads doing it contend for the GIL so
 * badly that a second one slows the scan down.  Here the whole table is read with the
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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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
    size_t rest;        /* offset in info where the lines past the common ones start */
    struct stat st;
    char *link;
    ssize_t link_len;
    char *info;
    size_t info_len;
};

struct scan {
    struct entry *entries;
    size_t n, cap;
    int err;            /* errno of the first hard failure, 0 if none */
    int err_fd;         /* the fd it happened on, -1 for the directories */
    const char *err_what;
};

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static void free_scan(struct scan *s) {
    for (size_t i = 0; i < s->n; i++) {
        free(s->entries[i].link);
        free(s->entries[i].info);
    }
    free(s->entries);
}

/* Read a whole fdinfo file.  seq_file hands it over in one read when it fits, so a short
 * read means the end; only a full buffer needs another read. */
static char *read_all(int fd, size_t *len) {
    size_t cap = INFO_CHUNK, n = 0;
    char *buf = malloc(cap);
    if (!buf) { errno = ENOMEM; return NULL; }
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) { int e = errno; free(buf); errno = e; return NULL; }
        n += (size_t)r;
        if (n < cap || r == 0) break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) { free(buf); errno = ENOMEM; return NULL; }
        buf = bigger;
        cap *= 2;
    }
    *len = n;
    return buf;
}

static int starts(const char *p, const char *end, const char *prefix) {
    size_t n = strlen(prefix);
    return (size_t)(end - p) >= n && memcmp(p, prefix, n) == 0;
}

/* Mirror of _procparse.split_fdinfo: consume leading pos/flags/mnt_id/ino lines. */
static void split_fdinfo(struct entry *e) {
    const char *p = e->info, *end = e->info + e->info_len;
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
    e->rest = (size_t)(p - e->info);
}

static void scan_table(const char *fd_dir, const char *info_dir, struct scan *s) {
    int *fds = NULL;
    size_t nfds = 0, fds_cap = 0;
    int dfd = -1, ifd = -1, lfd = -1;
    DIR *d = NULL;

    dfd = open(fd_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) { s->err = errno; s->err_what = fd_dir; goto out; }
    ifd = open(info_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (ifd < 0) { s->err = errno; s->err_what = info_dir; goto out; }
    lfd = dup(dfd);
    if (lfd < 0 || !(d = fdopendir(lfd))) {
        s->err = errno; s->err_what = fd_dir;
        if (lfd >= 0) close(lfd);
        goto out;
    }
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
        if (nfds == fds_cap) {
            size_t cap = fds_cap ? fds_cap * 2 : 256;
            int *more = realloc(fds, cap * sizeof *fds);
            if (!more) { s->err = ENOMEM; s->err_what = fd_dir; goto out; }
            fds = more;
            fds_cap = cap;
        }
        fds[nfds++] = atoi(de->d_name);
    }
    if (errno && errno != ENOENT) { s->err = errno; s->err_what = fd_dir; goto out; }
    qsort(fds, nfds, sizeof *fds, cmp_int);

    s->entries = calloc(nfds ? nfds : 1, sizeof *s->entries);
    if (!s->entries) { s->err = ENOMEM; s->err_what = fd_dir; goto out; }
    s->cap = nfds;

    char name[16], link[PATH_MAX + 1];
    for (size_t i = 0; i < nfds; i++) {
        struct entry *e = &s->entries[s->n];
        snprintf(name, sizeof name, "%d", fds[i]);
        ssize_t n = readlinkat(dfd, name, link, PATH_MAX);
        if (n < 0) goto fd_failed;
        if (fstatat(dfd, name, &e->st, 0) < 0) goto fd_failed;
        int f = openat(ifd, name, O_RDONLY | O_CLOEXEC);
        if (f < 0) goto fd_failed;
        e->info = read_all(f, &e->info_len);
        int saved = errno;
        close(f);
        errno = saved;
        if (!e->info) goto fd_failed;
        split_fdinfo(e);
        e->link = malloc((size_t)n + 1);
        if (!e->link) { free(e->info); e->info = NULL; errno = ENOMEM; goto fd_failed; }
        memcpy(e->link, link, (size_t)n);
        e->link[n] = '\0';
        e->link_len = n;
        e->fd = fds[i];
        s->n++;
        continue;
    fd_failed:
        if (errno == ENOENT) { errno = 0; continue; }  /* closed in the meantime */
        s->err = errno; s->err_fd = fds[i]; s->err_what = "fd";
        goto out;
    }
out:
    if (d) closedir(d);
    if (dfd >= 0) close(dfd);
    if (ifd >= 0) close(ifd);
    free(fds);
}

/* The result of one scan as Python objects; NULL with an exception set on failure. */
static PyObject *scan_to_python(struct scan *s, const char *fd_dir) {
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
        /* Built by hand, not with Py_BuildValue: this loop holds the GIL, and it is the
         * only part of a table scan that does. */
        PyObject *item = PyTuple_New(16);
        if (!item) { Py_DECREF(result); return NULL; }
        PyList_SET_ITEM(result, (Py_ssize_t)i, item);
        PyObject *v[16] = {
            PyLong_FromLong(e->fd),
            PyUnicode_DecodeFSDefaultAndSize(e->link, e->link_len),
            PyLong_FromUnsignedLong(e->st.st_mode),
            PyLong_FromUnsignedLongLong(e->st.st_dev),
            PyLong_FromUnsignedLongLong(e->st.st_ino),
            PyLong_FromUnsignedLongLong(e->st.st_rdev),
            PyLong_FromUnsignedLongLong(e->st.st_nlink),
            PyLong_FromUnsignedLong(e->st.st_uid),
            PyLong_FromUnsignedLong(e->st.st_gid),
            PyLong_FromLongLong(e->st.st_size),
            PyLong_FromLongLong((long long)e->st.st_mtim.tv_sec * 1000000000LL
                                + e->st.st_mtim.tv_nsec),
            PyLong_FromLongLong(e->st.st_blocks),
            PyLong_FromLongLong(e->pos),
            PyLong_FromUnsignedLong(e->flags),
            PyLong_FromLong(e->mnt_id),
            PyBytes_FromStringAndSize(e->info + e->rest, (Py_ssize_t)(e->info_len - e->rest)),
        };
        for (int k = 0; k < 16; k++) {
            if (!v[k]) {
                for (int j = k + 1; j < 16; j++) Py_XDECREF(v[j]);
                Py_DECREF(result);
                return NULL;
            }
            PyTuple_SET_ITEM(item, k, v[k]);
        }
    }
    return result;
}

static PyObject *read_table(PyObject *self, PyObject *args) {
    PyObject *fd_dir_obj, *info_dir_obj;
    if (!PyArg_ParseTuple(args, "O&O&", PyUnicode_FSConverter, &fd_dir_obj,
                          PyUnicode_FSConverter, &info_dir_obj))
        return NULL;
    const char *fd_dir = PyBytes_AS_STRING(fd_dir_obj);
    const char *info_dir = PyBytes_AS_STRING(info_dir_obj);
    struct scan s = {0};
    s.err_fd = -1;

    Py_BEGIN_ALLOW_THREADS
    scan_table(fd_dir, info_dir, &s);
    Py_END_ALLOW_THREADS

    PyObject *result = scan_to_python(&s, fd_dir);
    free_scan(&s);
    Py_DECREF(fd_dir_obj);
    Py_DECREF(info_dir_obj);
    return result;
}

/* read_tables([(fd_dir, fdinfo_dir), ...]) -> [list | OSError, ...]
 *
 * Every table with one release of the GIL.  Getting the GIL back is what a scanner
 * thread waits for while the resolver runs Python (up to the interpreter's switch
 * interval each time), so a chunk of tasks pays that wait once, not once per task.  A
 * table that cannot be read gives its OSError in its place, unraised. */
static PyObject *read_tables(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "read_tables takes a sequence of (fd_dir, fdinfo_dir)");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **paths = calloc((size_t)(2 * n + 1), sizeof *paths);
    struct scan *scans = calloc((size_t)n + 1, sizeof *scans);
    const char **dirs = calloc((size_t)(2 * n + 1), sizeof *dirs);
    PyObject *result = NULL;
    if (!paths || !scans || !dirs) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyArg_ParseTuple(pair, "O&O&", PyUnicode_FSConverter, &paths[2 * i],
                              PyUnicode_FSConverter, &paths[2 * i + 1]))
            goto done;
        dirs[2 * i] = PyBytes_AS_STRING(paths[2 * i]);
        dirs[2 * i + 1] = PyBytes_AS_STRING(paths[2 * i + 1]);
        scans[i].err_fd = -1;
    }

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) scan_table(dirs[2 * i], dirs[2 * i + 1], &scans[i]);
    Py_END_ALLOW_THREADS

    result = PyList_New(n);
    if (!result) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = scan_to_python(&scans[i], dirs[2 * i]);
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
    long p1 = PyLong_AsLong(PyTuple_GET_ITEM(args[0], 0));
    long f1 = PyLong_AsLong(PyTuple_GET_ITEM(args[0], 1));
    long p2 = PyLong_AsLong(PyTuple_GET_ITEM(args[1], 0));
    long f2 = PyLong_AsLong(PyTuple_GET_ITEM(args[1], 1));
    if (PyErr_Occurred()) return NULL;
    long r = syscall(SYS_kcmp, (pid_t)p1, (pid_t)p2, 0 /* KCMP_FILE */, f1, f2);
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
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    return owner_tuple((int)fd);
}

/* fd_owner_at(pidfd, fd) -> the same, for the task's fd: pidfd_getfd(2), so the same open
 * file description (never a re-open), read, closed.  For descriptions no handler took. */
static PyObject *fd_owner_at(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "fd_owner_at(pidfd, fd)");
        return NULL;
    }
    long pidfd = PyLong_AsLong(args[0]), target = PyLong_AsLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    int fd = (int)syscall(438 /* SYS_pidfd_getfd, the same on every architecture */,
                          (int)pidfd, (int)target, 0);
    if (fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *result = owner_tuple(fd);
    close(fd);
    return result;
}

static PyMethodDef methods[] = {
    {"read_tables", read_tables, METH_O,
     "read_tables([(fd_dir, fdinfo_dir), ...]) -> [rows or OSError, ...]: read_table for"
     " each, with a single release of the GIL."},
    {"kcmp_files", (PyCFunction)(void (*)(void))kcmp_files, METH_FASTCALL,
     "kcmp_files((pid1, fd1), (pid2, fd2)) -> kcmp(pid1, pid2, KCMP_FILE, fd1, fd2)"},
    {"fd_owner", fd_owner, METH_O,
     "fd_owner(fd) -> (type, pid, sig, uid, euid): F_GETOWN_EX, F_GETSIG, and"
     " F_GETOWNER_UIDS when an owner is set (else uid and euid are None)."},
    {"fd_owner_at", (PyCFunction)(void (*)(void))fd_owner_at, METH_FASTCALL,
     "fd_owner_at(pidfd, fd) -> fd_owner of the task's fd, through pidfd_getfd(2)."},
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

PyMODINIT_FUNC PyInit__fdscan(void) { return PyModule_Create(&module); }

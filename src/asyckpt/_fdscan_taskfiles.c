/*
 * asyckpt._fdscan, second half: a task's files held by reference, read without the GIL.
 *
 * read_task_files(pid, tids, known, cmdline) -> (cwd, root, exe, namespaces, maps,
 *                                              keys, mapped, threads, cmdline)
 *   maps is the maps text as read (parsed again after the thaw, when the ranges become
 *   records), keys the set of its file-backed (dev, ino), and mapped, in address order,
 *   (MapRow, file) for the first range of each file read in step 3: no object per
 *   range, nor per file the capture has read already, is made while frozen;
 *   as _rows.TaskFilesRow (the caller names it), read in three steps:
 *   1. without the GIL: cwd, root and exe (readlink + statx through the magic link, for
 *      st_* and the mount id), every /proc/PID/ns entry (stat, no open), the whole maps
 *      file (read until EOF: seq_file gives it a buffer at a time) parsed into rows, the
 *      other threads' cwd, root and namespaces, and cmdline when asked;
 *   2. with the GIL, for a moment: the first row of each file-backed (dev, ino) of the
 *      task (firsts), its key looked up in the capture's `known` set, and added; the
 *      first row of each key not there is wanted;
 *   3. without the GIL: readlink + statx of /proc/PID/map_files/START-END of the wanted
 *      rows (CAP_SYS_ADMIN: an EPERM is that file's errno, not a failure of the call).
 * A held file is an FdRow of fd -1, pos 0, flags O_PATH, no fdinfo; an int in its
 * place is the errno its read failed with.  _taskread._read_task_files_py is the
 * pure-Python twin (a differential test keeps them equal).
 *
 * parse_maps(data) -> [MapRow]: the maps parser alone (ValueError on a malformed line),
 * for the table-driven tests that hold it to _procparse.parse_maps.
 */
#include "_fdscan.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x1000U
#endif

static const char *const ns_types[] = {
    "cgroup", "ipc", "mnt", "net", "pid", "pid_for_children",
    "time", "time_for_children", "user", "uts",
};  /* _taskread.NS_TYPES */
#define N_NS (sizeof ns_types / sizeof *ns_types)

struct held {
    int err;            /* errno of the failed read, 0 when read */
    struct statx stx;
    char *link;
    size_t link_len;
};

struct nsset {
    int present[N_NS];
    unsigned long long ino[N_NS];
};

struct maprow {
    unsigned long long start, end, offset, ino;
    unsigned int major, minor;
    char perms[4];
    size_t name, name_len;  /* offset and length of the name in the maps text */
    int first;              /* the first row of its (dev, ino) in this task */
    int wanted;             /* step 3 reads its file */
    struct held file;
};

struct thread_files {
    int tid;
    struct held cwd, root;
    struct nsset ns;
};

struct task_read {
    int pid;
    struct held cwd, root, exe;
    struct nsset ns;
    char *maps;             /* the maps text */
    size_t maps_len;
    int maps_err;
    struct maprow *rows;
    size_t n_rows;
    struct thread_files *threads;
    size_t n_threads;
    char *cmdline;
    size_t cmdline_len;
    int cmdline_err;
};

/* The path of a magic link, stat'ed the way the Python twin does: readlink, then the
 * file it leads to (statx follows it, as open(O_PATH) + fstat does). */
static void read_held(const char *path, struct held *h) {
    char buf[PATH_MAX + 1];
    memset(h, 0, sizeof *h);
    ssize_t n = readlink(path, buf, PATH_MAX);
    if (n < 0) {
        if (errno != ENAMETOOLONG) { h->err = errno ? errno : EIO; return; }
        n = 0;  /* longer than PATH_MAX: recorded without a name, as an fd is */
    }
    if (statx(AT_FDCWD, path, 0, STATX_BASIC_STATS | STATX_MNT_ID, &h->stx) < 0) {
        h->err = errno ? errno : EIO;
        return;
    }
    h->link = malloc((size_t)n + 1);
    if (!h->link) { h->err = ENOMEM; return; }
    memcpy(h->link, buf, (size_t)n);
    h->link[n] = '\0';
    h->link_len = (size_t)n;
}

/* The link's text, "net:[4026531840]", holds the namespace's inode number: readlink
 * costs less than half of a stat through nsfs, and a task has ten of them. */
static void read_ns(const char *base, struct nsset *ns) {
    char path[96], text[64];
    for (size_t i = 0; i < N_NS; i++) {
        snprintf(path, sizeof path, "%s/ns/%s", base, ns_types[i]);
        ssize_t n = readlink(path, text, sizeof text - 1);  /* fails: this kernel lacks it */
        unsigned long long ino = 0;
        char *open = NULL, *end = NULL;
        if (n > 0) {
            text[n] = '\0';
            open = strchr(text, '[');
            if (open) {
                errno = 0;
                ino = strtoull(open + 1, &end, 10);
            }
        }
        ns->present[i] = open && end && end != open + 1 && end[0] == ']' && end[1] == '\0'
                         && errno == 0;
        ns->ino[i] = ns->present[i] ? ino : 0;
    }
}

/* Up to maxd lowercase hex digits (at least one), as the kernel prints them. */
static int hex_field(const char **pp, const char *end, int maxd, unsigned long long *out) {
    const char *p = *pp;
    unsigned long long v = 0;
    int d = 0;
    while (p < end && d <= maxd) {
        int x;
        if (*p >= '0' && *p <= '9') x = *p - '0';
        else if (*p >= 'a' && *p <= 'f') x = *p - 'a' + 10;
        else break;
        v = v * 16 + (unsigned long long)x;
        p++;
        d++;
    }
    if (d == 0 || d > maxd) return -1;
    *out = v;
    *pp = p;
    return 0;
}

static int expect(const char **pp, const char *end, char c) {
    if (*pp >= end || **pp != c) return -1;
    (*pp)++;
    return 0;
}

/* One line of maps (no newline in it): START-END PERMS OFFSET MAJ:MIN INO, spaces, the
 * name; exactly what _procparse._MAPS_LINE accepts.  0, or -1 when malformed. */
static int parse_line(const char *text, const char *p, const char *eol, struct maprow *r) {
    unsigned long long major, minor;
    if (hex_field(&p, eol, 16, &r->start) < 0 || expect(&p, eol, '-') < 0
        || hex_field(&p, eol, 16, &r->end) < 0 || expect(&p, eol, ' ') < 0)
        return -1;
    if (eol - p < 5 || (p[0] != 'r' && p[0] != '-') || (p[1] != 'w' && p[1] != '-')
        || (p[2] != 'x' && p[2] != '-') || (p[3] != 'p' && p[3] != 's') || p[4] != ' ')
        return -1;
    memcpy(r->perms, p, 4);
    p += 5;
    if (hex_field(&p, eol, 16, &r->offset) < 0 || expect(&p, eol, ' ') < 0
        || hex_field(&p, eol, 8, &major) < 0 || expect(&p, eol, ':') < 0
        || hex_field(&p, eol, 8, &minor) < 0 || expect(&p, eol, ' ') < 0)
        return -1;
    r->major = (unsigned int)major;
    r->minor = (unsigned int)minor;
    unsigned long long ino = 0;
    int d = 0;
    while (p < eol && *p >= '0' && *p <= '9') {
        unsigned x = (unsigned)(*p - '0');
        if (ino > (ULLONG_MAX - x) / 10) return -1;
        ino = ino * 10 + x;
        p++;
        if (++d > 20) return -1;
    }
    if (d == 0) return -1;
    r->ino = ino;
    while (p < eol && *p == ' ') p++;
    r->name = (size_t)(p - text);
    r->name_len = (size_t)(eol - p);
    return 0;
}

/* Every non-empty line of the text; -1 (and no rows) at the first malformed one, whose
 * offset goes to *bad. */
static int parse_maps_text(const char *text, size_t len, struct maprow **rows, size_t *n,
                           size_t *bad) {
    size_t cap = 0, count = 0;
    struct maprow *out = NULL;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        if (eol > p) {
            if (count == cap) {
                size_t more = cap ? cap * 2 : 256;
                struct maprow *bigger = realloc(out, more * sizeof *out);
                if (!bigger) { free(out); errno = ENOMEM; return -1; }
                out = bigger;
                cap = more;
            }
            memset(&out[count], 0, sizeof *out);
            if (parse_line(text, p, eol, &out[count]) < 0) {
                free(out);
                *bad = (size_t)(p - text);
                errno = EPROTO;
                return -1;
            }
            count++;
        }
        p = nl ? nl + 1 : end;
    }
    *rows = out;
    *n = count;
    return 0;
}

static unsigned long long row_dev(const struct maprow *r) {
    return (unsigned long long)makedev(r->major, r->minor);
}

/* Step 1: everything but the mapped files. */
static void read_task(struct task_read *t, int cmdline) {
    char base[64], path[128];
    snprintf(base, sizeof base, "/proc/%d", t->pid);
    snprintf(path, sizeof path, "%s/maps", base);
    size_t bad;
    if (asyckpt_read_whole(path, 65536, &t->maps, &t->maps_len) < 0
        || parse_maps_text(t->maps, t->maps_len, &t->rows, &t->n_rows, &bad) < 0)
        t->maps_err = errno ? errno : EIO;
    for (size_t i = 0; i < t->n_threads; i++) {
        struct thread_files *th = &t->threads[i];
        char tbase[96];
        snprintf(tbase, sizeof tbase, "%s/task/%d", base, th->tid);
        snprintf(path, sizeof path, "%s/cwd", tbase);
        read_held(path, &th->cwd);
        snprintf(path, sizeof path, "%s/root", tbase);
        read_held(path, &th->root);
        read_ns(tbase, &th->ns);
    }
    if (cmdline) {
        snprintf(path, sizeof path, "%s/cmdline", base);
        if (asyckpt_read_whole(path, 4096, &t->cmdline, &t->cmdline_len) < 0)
            t->cmdline_err = errno;
    }
    snprintf(path, sizeof path, "%s/cwd", base);
    read_held(path, &t->cwd);
    snprintf(path, sizeof path, "%s/root", base);
    read_held(path, &t->root);
    snprintf(path, sizeof path, "%s/exe", base);
    read_held(path, &t->exe);
    read_ns(base, &t->ns);
}

/* Step 2, with the GIL: the task's file keys (into `here`), and which rows are the
 * first of a file the capture has not read yet.  -1 with an exception set. */
static int pick_wanted(struct task_read *t, PyObject *known, PyObject *here) {
    for (size_t i = 0; i < t->n_rows; i++) {
        struct maprow *r = &t->rows[i];
        unsigned long long dev = row_dev(r);
        if (dev == 0 && r->ino == 0) continue;  /* anonymous */
        PyObject *key = Py_BuildValue("(KK)", dev, r->ino);
        if (!key) return -1;
        int seen = PySet_Contains(here, key);
        if (seen == 0) {
            r->first = 1;
            seen = PySet_Add(here, key);
            if (seen == 0) {
                seen = PySet_Contains(known, key);
                if (seen == 0) {
                    r->wanted = 1;
                    seen = PySet_Add(known, key);
                }
            }
        }
        Py_DECREF(key);
        if (seen < 0) return -1;
    }
    return 0;
}

/* Step 3. */
static void read_wanted(struct task_read *t) {
    char path[96];
    for (size_t i = 0; i < t->n_rows; i++) {
        struct maprow *r = &t->rows[i];
        if (!r->wanted) continue;
        snprintf(path, sizeof path, "/proc/%d/map_files/%llx-%llx", t->pid, r->start, r->end);
        read_held(path, &r->file);
    }
}

static void free_task(struct task_read *t) {
    free(t->cwd.link);
    free(t->root.link);
    free(t->exe.link);
    for (size_t i = 0; i < t->n_rows; i++) free(t->rows[i].file.link);
    free(t->rows);
    free(t->maps);
    for (size_t i = 0; i < t->n_threads; i++) {
        free(t->threads[i].cwd.link);
        free(t->threads[i].root.link);
    }
    free(t->threads);
    free(t->cmdline);
}

static unsigned long long stx_dev(unsigned int major, unsigned int minor) {
    return (unsigned long long)makedev(major, minor);
}

/* A held file as an FdRow of fd -1, or its errno as an int. */
static PyObject *held_obj(const struct held *h) {
    if (h->err) return PyLong_FromLong(h->err);
    PyObject *row = asyckpt_new_row(asyckpt_fd_row_type, 16);
    if (!row) return NULL;
    const struct statx *s = &h->stx;
    PyObject *v[16] = {
        PyLong_FromLong(-1),
        PyUnicode_DecodeFSDefaultAndSize(h->link, (Py_ssize_t)h->link_len),
        PyLong_FromUnsignedLong(s->stx_mode),
        PyLong_FromUnsignedLongLong(stx_dev(s->stx_dev_major, s->stx_dev_minor)),
        PyLong_FromUnsignedLongLong(s->stx_ino),
        PyLong_FromUnsignedLongLong(stx_dev(s->stx_rdev_major, s->stx_rdev_minor)),
        PyLong_FromUnsignedLongLong(s->stx_nlink),
        PyLong_FromUnsignedLong(s->stx_uid),
        PyLong_FromUnsignedLong(s->stx_gid),
        PyLong_FromUnsignedLongLong(s->stx_size),
        PyLong_FromLongLong((long long)s->stx_mtime.tv_sec * 1000000000LL + s->stx_mtime.tv_nsec),
        PyLong_FromUnsignedLongLong(s->stx_blocks),
        PyLong_FromLong(0),
        PyLong_FromLong(O_PATH),
        PyLong_FromUnsignedLongLong((s->stx_mask & STATX_MNT_ID) ? s->stx_mnt_id : 0),
        PyBytes_FromStringAndSize("", 0),
    };
    for (int k = 0; k < 16; k++) {
        if (!v[k]) {
            for (int j = k + 1; j < 16; j++) Py_XDECREF(v[j]);
            Py_DECREF(row);
            return NULL;
        }
        PyStructSequence_SET_ITEM(row, k, v[k]);
    }
    return row;
}

static PyObject *ns_obj(const struct nsset *ns) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (size_t i = 0; i < N_NS; i++) {
        if (!ns->present[i]) continue;
        PyObject *v = PyLong_FromUnsignedLongLong(ns->ino[i]);
        if (!v || PyDict_SetItemString(d, ns_types[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyTypeObject *map_row_type;

static PyStructSequence_Field map_row_fields[] = {
    {"start", NULL}, {"end", NULL}, {"perms", NULL}, {"offset", NULL},
    {"dev", NULL}, {"ino", NULL}, {"name", NULL}, {NULL, NULL},
};
static PyStructSequence_Desc map_row_desc = {
    "asyckpt._fdscan.MapRow",
    "One line of /proc/PID/maps: range, perms, offset, dev, ino and the name as written.",
    map_row_fields, 7,
};

static PyObject *row_obj(const char *text, const struct maprow *r) {
    PyObject *row = asyckpt_new_row(map_row_type, 7);
    if (!row) return NULL;
    PyObject *v[7] = {
        PyLong_FromUnsignedLongLong(r->start),
        PyLong_FromUnsignedLongLong(r->end),
        PyUnicode_FromStringAndSize(r->perms, 4),
        PyLong_FromUnsignedLongLong(r->offset),
        PyLong_FromUnsignedLongLong(row_dev(r)),
        PyLong_FromUnsignedLongLong(r->ino),
        PyBytes_FromStringAndSize(text + r->name, (Py_ssize_t)r->name_len),
    };
    for (int k = 0; k < 7; k++) {
        if (!v[k]) {
            for (int j = k + 1; j < 7; j++) Py_XDECREF(v[j]);
            Py_DECREF(row);
            return NULL;
        }
        PyStructSequence_SET_ITEM(row, k, v[k]);
    }
    return row;
}

static PyObject *rows_obj(const char *text, const struct maprow *rows, size_t n) {
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *row = row_obj(text, &rows[i]);
        if (!row) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, (Py_ssize_t)i, row);
    }
    return list;
}

static PyObject *result_obj(const struct task_read *t, PyObject *keys) {
    PyObject *maps = NULL, *mapped = NULL, *threads = NULL, *cmdline = NULL;
    PyObject *cwd = held_obj(&t->cwd), *root = held_obj(&t->root), *exe = held_obj(&t->exe);
    PyObject *ns = ns_obj(&t->ns);
    if (!cwd || !root || !exe || !ns) goto fail;
    /* The text, not a row per line: the ranges are made into records after the thaw;
     * rows only for the first range of each file, which the resolver needs now. */
    maps = t->maps_err ? PyLong_FromLong(t->maps_err)
                       : PyBytes_FromStringAndSize(t->maps, (Py_ssize_t)t->maps_len);
    mapped = PyList_New(0);
    threads = PyList_New((Py_ssize_t)t->n_threads);
    if (!maps || !mapped || !threads) goto fail;
    for (size_t i = 0; i < t->n_rows; i++) {
        const struct maprow *r = &t->rows[i];
        if (!r->wanted) continue;
        PyObject *item = Py_BuildValue("(NN)", row_obj(t->maps, r), held_obj(&r->file));
        int rc = item ? PyList_Append(mapped, item) : -1;
        Py_XDECREF(item);
        if (rc < 0) goto fail;
    }
    for (size_t i = 0; i < t->n_threads; i++) {
        const struct thread_files *th = &t->threads[i];
        PyObject *item = Py_BuildValue("(iNNN)", th->tid, held_obj(&th->cwd),
                                       held_obj(&th->root), ns_obj(&th->ns));
        if (!item) goto fail;
        PyList_SET_ITEM(threads, (Py_ssize_t)i, item);
    }
    if (t->cmdline && !t->cmdline_err)
        cmdline = PyBytes_FromStringAndSize(t->cmdline, (Py_ssize_t)t->cmdline_len);
    else
        cmdline = Py_NewRef(Py_None);
    if (!cmdline) goto fail;
    return Py_BuildValue("(NNNNNONNN)", cwd, root, exe, ns, maps, keys, mapped, threads, cmdline);
fail:
    Py_XDECREF(cwd);
    Py_XDECREF(root);
    Py_XDECREF(exe);
    Py_XDECREF(ns);
    Py_XDECREF(maps);
    Py_XDECREF(mapped);
    Py_XDECREF(threads);
    Py_XDECREF(cmdline);
    return NULL;
}

PyObject *asyckpt_read_task_files(PyObject *self, PyObject *args) {
    int pid, cmdline;
    PyObject *tids_arg, *known;
    if (!PyArg_ParseTuple(args, "iO!O!p:read_task_files", &pid, &PyList_Type, &tids_arg,
                          &PySet_Type, &known, &cmdline))
        return NULL;
    if (pid < 1) {
        PyErr_Format(PyExc_ValueError, "read_task_files: pid %d out of range", pid);
        return NULL;
    }
    struct task_read t;
    memset(&t, 0, sizeof t);
    t.pid = pid;
    Py_ssize_t n = PyList_GET_SIZE(tids_arg);
    t.threads = calloc(n ? (size_t)n : 1, sizeof *t.threads);
    if (!t.threads) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyList_GET_ITEM(tids_arg, i);
        long tid = PyLong_Check(o) ? PyLong_AsLong(o) : -1;
        if (tid < 1 || tid > INT_MAX) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "read_task_files: a tid is an int in [1, INT_MAX]");
            free(t.threads);
            return NULL;
        }
        t.threads[i].tid = (int)tid;
    }
    t.n_threads = (size_t)n;
    Py_BEGIN_ALLOW_THREADS
    read_task(&t, cmdline);
    Py_END_ALLOW_THREADS
    PyObject *keys = PySet_New(NULL);
    if (!keys || pick_wanted(&t, known, keys) < 0) {
        Py_XDECREF(keys);
        free_task(&t);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    read_wanted(&t);
    Py_END_ALLOW_THREADS
    PyObject *result = result_obj(&t, keys);
    Py_DECREF(keys);
    free_task(&t);
    return result;
}

PyObject *asyckpt_parse_maps(PyObject *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "parse_maps: data must be bytes");
        return NULL;
    }
    const char *text = PyBytes_AS_STRING(arg);
    size_t len = (size_t)PyBytes_GET_SIZE(arg), n = 0, bad = 0;
    struct maprow *rows = NULL;
    if (parse_maps_text(text, len, &rows, &n, &bad) < 0) {
        if (errno == ENOMEM) return PyErr_NoMemory();
        const char *nl = memchr(text + bad, '\n', len - bad);
        size_t line = (size_t)((nl ? nl : text + len) - (text + bad));
        PyObject *shown = PyBytes_FromStringAndSize(text + bad, (Py_ssize_t)(line < 200 ? line : 200));
        if (shown) {
            PyErr_Format(PyExc_ValueError, "maps: malformed line %R", shown);
            Py_DECREF(shown);
        }
        return NULL;
    }
    PyObject *out = rows_obj(text, rows, n);
    free(rows);
    return out;
}

int asyckpt_taskfiles_init(PyObject *module) {
    if (!map_row_type) {
        map_row_type = PyStructSequence_NewType(&map_row_desc);
        if (!map_row_type) return -1;
    }
    return PyModule_AddObjectRef(module, "MapRow", (PyObject *)map_row_type);
}

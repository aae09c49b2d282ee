/* What the two halves of asyckpt._fdscan share: _fdscan.c (fd tables, kcmp, the dedup
 * loop) and _fdscan_taskfiles.c (a task's files held by reference: cwd, root, exe,
 * namespaces, memory mappings). */
#ifndef ASYCKPT_FDSCAN_H
#define ASYCKPT_FDSCAN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* _fdscan.FdRow: a held file is a row of it with fd -1 (made in _fdscan.c). */
extern PyTypeObject *asyckpt_fd_row_type;

/* A whole /proc file, read until EOF into a malloc'd buffer (``cap`` bytes to begin
 * with, doubled as needed); -1 with errno set.  Made in _fdscan.c. */
int asyckpt_read_whole(const char *path, size_t cap, char **out, size_t *len);

/* A struct sequence of n fields, every field unset until filled. */
PyObject *asyckpt_new_row(PyTypeObject *type, Py_ssize_t n);

/* read_task_files(pid, tids, known, cmdline) and parse_maps(data): _fdscan_taskfiles.c. */
PyObject *asyckpt_read_task_files(PyObject *self, PyObject *args);
PyObject *asyckpt_parse_maps(PyObject *self, PyObject *arg);

/* Makes the MapRow type and adds it to the module; -1 with an exception set. */
int asyckpt_taskfiles_init(PyObject *module);

#endif

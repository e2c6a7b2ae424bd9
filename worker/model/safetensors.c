/*
 * safetensors.c — parse, validate and mmap safetensors files (see the header).
 *
 * Layout of a file: u64 little-endian header length N, N bytes of JSON
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
 * then the data section; offsets are relative to its start.
 *
 * Validation happens in full before a set is returned, so no later reader
 * ever touches bytes outside a mapping.
 */
#include "worker/model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (256u << 20)

typedef struct st_file {
    char *path;
    void *map;
    size_t size;
} st_file;

struct st_set {
    st_file *files;
    int n_files;
    st_tensor *tensors; /* sorted by name */
    size_t n_tensors;
};

static int cmp_tensor(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

typedef struct span {
    uint64_t begin, end;
    const char *name;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

static int parse_dtype(const char *s, llmq_dtype *dt, size_t *size) {
    static const struct { const char *n; size_t sz; int known; llmq_dtype dt; } t[] = {
        {"F32", 4, 1, LLMQ_F32}, {"F16", 2, 1, LLMQ_F16}, {"BF16", 2, 1, LLMQ_BF16},
        {"F64", 8, 0, LLMQ_F32}, {"I64", 8, 0, LLMQ_F32}, {"I32", 4, 0, LLMQ_F32},
        {"I16", 2, 0, LLMQ_F32}, {"I8", 1, 0, LLMQ_F32},  {"U8", 1, 0, LLMQ_F32},
        {"BOOL", 1, 0, LLMQ_F32}, {"F8_E4M3", 1, 0, LLMQ_F32}, {"F8_E5M2", 1, 0, LLMQ_F32},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(s, t[i].n)) {
            *dt = t[i].dt;
            *size = t[i].sz;
            return t[i].known;
        }
    return -1;
}

/* Append the tensors of one mapped file to s->tensors. */
static llmq_status parse_file(st_set *s, int fi, llmq_err *err) {
    const st_file *f = &s->files[fi];
    const char *path = f->path;
    if (f->size < 8) return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: too short to be safetensors (%zu bytes)", path, f->size);
    uint64_t hlen = 0;
    const unsigned char *p = f->map;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > f->size - 8 || hlen > ST_MAX_HEADER)
        return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: header length %llu exceeds the file (%zu bytes)", path,
                            (unsigned long long)hlen, f->size);
    const size_t data_size = f->size - 8 - hlen;
    const unsigned char *data = p + 8 + hlen;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)p + 8, hlen, 0, &jerr);
    if (!root) return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: header is not valid JSON: %s", path, jerr.text);
    llmq_status st = LLMQ_ERR_FORMAT;
    span *spans = NULL;
    size_t n_spans = 0;
    if (!json_is_object(root)) {
        llmq_err_set(err, st, "%s: header must be a JSON object", path);
        goto out;
    }
    size_t count = json_object_size(root);
    st_tensor *grown = realloc(s->tensors, (s->n_tensors + count) * sizeof *grown);
    spans = calloc(count ? count : 1, sizeof *spans);
    if (!grown || !spans) {
        if (grown) s->tensors = grown;
        st = llmq_err_set(err, LLMQ_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    s->tensors = grown;

    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) continue;
        st_tensor t;
        memset(&t, 0, sizeof t);
        if (!json_is_object(val)) {
            llmq_err_set(err, st, "%s: tensor \"%s\": entry must be an object", path, key);
            goto out;
        }
        json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"),
               *jo = json_object_get(val, "data_offsets");
        if (!json_is_string(jd)) {
            llmq_err_set(err, st, "%s: tensor \"%s\": missing or non-string dtype", path, key);
            goto out;
        }
        size_t esize = 0;
        int known = parse_dtype(json_string_value(jd), &t.dt, &esize);
        if (known < 0) {
            llmq_err_set(err, st, "%s: tensor \"%s\": unknown dtype \"%s\"", path, key, json_string_value(jd));
            goto out;
        }
        t.dtype_known = known;
        snprintf(t.dtype_name, sizeof t.dtype_name, "%s", json_string_value(jd));
        if (!json_is_array(js) || json_array_size(js) > ST_MAX_DIMS) {
            llmq_err_set(err, st, "%s: tensor \"%s\": shape must be a list of at most %d integers", path, key,
                         ST_MAX_DIMS);
            goto out;
        }
        uint64_t elems = 1;
        t.ndim = (int)json_array_size(js);
        for (int d = 0; d < t.ndim; d++) {
            json_t *e = json_array_get(js, (size_t)d);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > (1LL << 40)) {
                llmq_err_set(err, st, "%s: tensor \"%s\": shape[%d] is not a valid dimension", path, key, d);
                goto out;
            }
            t.shape[d] = json_integer_value(e);
            elems *= (uint64_t)t.shape[d];
            if (elems > (1ULL << 42)) {
                llmq_err_set(err, st, "%s: tensor \"%s\": shape is absurdly large", path, key);
                goto out;
            }
        }
        if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
            !json_is_integer(json_array_get(jo, 1))) {
            llmq_err_set(err, st, "%s: tensor \"%s\": data_offsets must be [begin, end]", path, key);
            goto out;
        }
        json_int_t b = json_integer_value(json_array_get(jo, 0)), e = json_integer_value(json_array_get(jo, 1));
        if (b < 0 || e < b || (uint64_t)e > data_size) {
            llmq_err_set(err, st, "%s: tensor \"%s\": data_offsets [%lld, %lld] outside the data section (%zu bytes)",
                         path, key, (long long)b, (long long)e, data_size);
            goto out;
        }
        if ((uint64_t)(e - b) != elems * esize) {
            llmq_err_set(err, st,
                         "%s: tensor \"%s\": %lld bytes of data but shape x %s needs %llu", path, key,
                         (long long)(e - b), t.dtype_name, (unsigned long long)(elems * esize));
            goto out;
        }
        t.name = strdup(key);
        if (!t.name) {
            st = llmq_err_set(err, LLMQ_ERR_NOMEM, "%s: out of memory", path);
            goto out;
        }
        t.data = data + b;
        t.nbytes = (size_t)(e - b);
        t.file = fi;
        spans[n_spans++] = (span){(uint64_t)b, (uint64_t)e, t.name};
        s->tensors[s->n_tensors++] = t;
    }
    qsort(spans, n_spans, sizeof *spans, cmp_span);
    for (size_t i = 1; i < n_spans; i++)
        if (spans[i].begin < spans[i - 1].end && spans[i].end > spans[i].begin) {
            llmq_err_set(err, st, "%s: tensors \"%s\" and \"%s\" overlap in the data section", path,
                         spans[i - 1].name, spans[i].name);
            goto out;
        }
    st = LLMQ_OK;
out:
    free(spans);
    json_decref(root);
    return st;
}

static llmq_status map_file(st_file *f, const char *path, llmq_err *err) {
    f->path = strdup(path);
    if (!f->path) return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return llmq_err_set(err, LLMQ_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return llmq_err_set(err, LLMQ_ERR_IO, "%s: not a regular file", path);
    }
    f->size = (size_t)sb.st_size;
    if (f->size > 0) {
        f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            close(fd);
            return llmq_err_set(err, LLMQ_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
        }
    }
    close(fd);
    return LLMQ_OK;
}

static llmq_status finish(st_set *s, llmq_err *err) {
    qsort(s->tensors, s->n_tensors, sizeof *s->tensors, cmp_tensor);
    for (size_t i = 1; i < s->n_tensors; i++)
        if (!strcmp(s->tensors[i].name, s->tensors[i - 1].name))
            return llmq_err_set(err, LLMQ_ERR_FORMAT, "tensor \"%s\" appears in both %s and %s", s->tensors[i].name,
                                s->files[s->tensors[i - 1].file].path, s->files[s->tensors[i].file].path);
    return LLMQ_OK;
}

static llmq_status open_paths(st_set **out, char **paths, int n, llmq_err *err) {
    st_set *s = calloc(1, sizeof *s);
    if (!s || !(s->files = calloc((size_t)n, sizeof *s->files))) {
        free(s);
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
    }
    s->n_files = n;
    llmq_status st = LLMQ_OK;
    for (int i = 0; i < n && !st; i++) {
        st = map_file(&s->files[i], paths[i], err);
        if (!st) st = parse_file(s, i, err);
    }
    if (!st) st = finish(s, err);
    if (st) {
        st_close(s);
        return st;
    }
    *out = s;
    return LLMQ_OK;
}

llmq_status st_open_file(st_set **out, const char *path, llmq_err *err) {
    char *p = (char *)path;
    return open_paths(out, &p, 1, err);
}

llmq_status st_open_dir(st_set **out, const char *dir, llmq_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_error_t jerr;
    json_t *idx = json_load_file(path, 0, &jerr);
    if (!idx) {
        if (access(path, F_OK) == 0)
            return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (access(path, F_OK) != 0)
            return llmq_err_set(err, LLMQ_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json", dir);
        return st_open_file(out, path, err);
    }
    llmq_status st = LLMQ_ERR_FORMAT;
    char **paths = NULL;
    int n = 0;
    json_t *map = json_object_get(idx, "weight_map");
    if (!json_is_object(map)) {
        llmq_err_set(err, st, "%s: \"weight_map\" must be an object", path);
        goto out;
    }
    paths = calloc(json_object_size(map) + 1, sizeof *paths);
    if (!paths) {
        st = llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val) {
        if (!json_is_string(val) || strchr(json_string_value(val), '/')) {
            llmq_err_set(err, st, "%s: weight_map[\"%s\"] must be a file name in the model directory", path, key);
            goto out;
        }
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", dir, json_string_value(val));
        int seen = 0;
        for (int i = 0; i < n && !seen; i++) seen = !strcmp(paths[i], full);
        if (!seen && !(paths[n++] = strdup(full))) {
            st = llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
            goto out;
        }
    }
    if (n == 0) {
        llmq_err_set(err, st, "%s: weight_map is empty", path);
        goto out;
    }
    st_set *s = NULL;
    st = open_paths(&s, paths, n, err);
    if (st) goto out;
    /* Every tensor the index promises must be in the file it names. */
    json_object_foreach(map, key, val) {
        const st_tensor *t = st_find(s, key);
        if (!t || strcmp(strrchr(s->files[t->file].path, '/') + 1, json_string_value(val))) {
            st = llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: tensor \"%s\" is not in %s as the index says", path, key,
                              json_string_value(val));
            st_close(s);
            goto out;
        }
    }
    *out = s;
out:
    if (paths)
        for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    json_decref(idx);
    return st;
}

void st_close(st_set *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n_tensors; i++) free(s->tensors[i].name);
    free(s->tensors);
    for (int i = 0; i < s->n_files; i++) {
        if (s->files[i].map) munmap(s->files[i].map, s->files[i].size);
        free(s->files[i].path);
    }
    free(s->files);
    free(s);
}

const st_tensor *st_find(const st_set *s, const char *name) {
    st_tensor key;
    key.name = (char *)name;
    return bsearch(&key, s->tensors, s->n_tensors, sizeof key, cmp_tensor);
}

size_t st_count(const st_set *s) { return s->n_tensors; }
const st_tensor *st_at(const st_set *s, size_t i) { return i < s->n_tensors ? &s->tensors[i] : NULL; }
const char *st_file_path(const st_set *s, int file) { return file >= 0 && file < s->n_files ? s->files[file].path : NULL; }

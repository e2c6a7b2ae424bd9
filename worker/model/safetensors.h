/*
 * safetensors.h — read-only access to Hugging Face safetensors files, mmapped.
 *
 * A model directory holds either model.safetensors or shards listed by
 * model.safetensors.index.json.  Everything is validated before use: header
 * length inside the file, header JSON, dtype names, shapes, data offsets
 * inside the data section and not overlapping, byte size = shape x dtype.
 * A bad file gets an error naming the file, the tensor and the problem.
 *
 * Tensors are views into the mappings: valid until st_close().
 */
#ifndef LLMQ_SAFETENSORS_H
#define LLMQ_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "kernels/backend.h"

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;
    char dtype_name[8];       /* as in the header: "F32", "BF16", "I64", ... */
    int dtype_known;          /* 1 when dt is meaningful (F32, F16, BF16) */
    llmq_dtype dt;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;         /* inside the file's mapping */
    size_t nbytes;
    int file;                 /* index into the set's files */
} st_tensor;

typedef struct st_set st_set;

/* Open dir/model.safetensors, or the shards of dir/model.safetensors.index.json. */
llmq_status st_open_dir(st_set **out, const char *dir, llmq_err *err);
/* Open one file (tests, tools). */
llmq_status st_open_file(st_set **out, const char *path, llmq_err *err);
void st_close(st_set *s);

const st_tensor *st_find(const st_set *s, const char *name); /* NULL when absent */
size_t st_count(const st_set *s);
const st_tensor *st_at(const st_set *s, size_t i);
const char *st_file_path(const st_set *s, int file);

#endif

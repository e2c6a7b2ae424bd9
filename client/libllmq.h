/*
 * libllmq.h — a small synchronous C client of the llmq Redis protocol v1
 * (docs/protocol.md): submit a job, read its state, stream its chunks,
 * cancel it.  It speaks only the protocol (common/), through a blocking
 * hiredis connection; it needs no gateway and links nothing of the worker.
 *
 *   llmq_err err;
 *   llmq_client *c = llmq_connect("redis://127.0.0.1:6379", NULL, &err);
 *   proto_request r; proto_request_init(&r);
 *   r.model = "stories260K"; r.kind = PROTO_PROMPT_TEXT; r.prompt = "Once"; r.max_tokens = 32;
 *   char id[LLMQ_ID_MAX];
 *   llmq_submit(c, &r, id, sizeof id, &err);
 *   llmq_stream(c, id, 0, 0, print_chunk, NULL, &err);
 *   llmq_close(c);
 *
 * Ownership: the client owns its connection; llmq_job owns its strings
 * (llmq_job_free).  Chunks passed to callbacks are valid during the call.
 * A client is not thread-safe: use one per thread.
 */
#ifndef LLMQ_LIBLLMQ_H
#define LLMQ_LIBLLMQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/protocol.h"
#include "common/status.h"

#define LLMQ_ID_MAX (PROTO_MAX_ID_LEN + 1)

typedef struct llmq_client llmq_client;

/* Connect to url (redis://... or unix://...); prefix NULL = "llmq:".  NULL
 * with err set when the URL is bad or Redis is unreachable. */
llmq_client *llmq_connect(const char *url, const char *prefix, llmq_err *err);
void llmq_close(llmq_client *c); /* c may be NULL */

/*
 * Submit req: creates the model's consumer group when missing, then writes
 * the job hash (state queued) and the stream entry in one MULTI.  req->model
 * and a prompt are required; req->id NULL → a fresh random id.  The id is
 * copied to id_out (cap >= LLMQ_ID_MAX).
 */
llmq_status llmq_submit(llmq_client *c, const proto_request *req, char *id_out, size_t cap, llmq_err *err);

/*
 * Whether a live worker serves model: a heartbeat in <prefix>workers names it
 * and is younger than HB_LIVE_MS (common/heartbeat.h).  *workers gets the
 * count of such heartbeats (0 = nobody serves it now); max_model_len, when
 * not NULL, the smallest context they report (0 = none reported).  A model
 * that scales from zero has no live worker until its first job is queued:
 * the caller decides whether to submit anyway.
 */
llmq_status llmq_model_workers(llmq_client *c, const char *model, int *workers, int *max_model_len, llmq_err *err);

/* A job as its hash and output stream describe it. */
typedef struct llmq_job {
    proto_job_state state;       /* parsed `state` */
    char state_name[16];         /* as stored ("queued", ...) */
    char model[PROTO_MAX_MODEL_LEN + 1];
    char finish_reason[32];      /* "" until finished */
    char *text;                  /* the text so far, NUL terminated (owned) */
    size_t text_len;
    int64_t n_chunks;            /* chunks in the output stream */
    bool has_usage;              /* usage known (job finished) */
    proto_usage usage;
    int64_t created_ms, started_ms, finished_ms; /* 0 = not yet */
    int attempts;                /* admissions by workers */
    char *error;                 /* failure message or NULL (owned) */
    bool cancel_requested;       /* the cancel flag is set */
} llmq_job;

/* Read job id.  LLMQ_ERR_INVALID ("no job ...") when it does not exist. */
llmq_status llmq_get(llmq_client *c, const char *id, llmq_job *out, llmq_err *err);
void llmq_job_free(llmq_job *j); /* frees the strings; j may be NULL */

/* Called for each chunk in seq order; return nonzero to stop streaming. */
typedef int (*llmq_chunk_fn)(void *user, const proto_chunk *chunk);

/*
 * Deliver the chunks of job id from seq from_seq on (XREAD BLOCK on its
 * output stream), each once, until the final chunk (LLMQ_OK), the callback
 * stops it (LLMQ_OK), or no chunk came for timeout_ms (LLMQ_ERR_TIMEOUT;
 * 0 = wait forever).  LLMQ_ERR_INVALID when the job does not exist.
 */
llmq_status llmq_stream(llmq_client *c, const char *id, int64_t from_seq, int timeout_ms, llmq_chunk_fn fn,
                        void *user, llmq_err *err);

/* Results of llmq_cancel. */
typedef enum llmq_cancel_result {
    LLMQ_CANCEL_NOT_FOUND = 0,   /* no such job */
    LLMQ_CANCEL_REQUESTED = 1,   /* running: the worker ends it between two steps */
    LLMQ_CANCEL_DONE = 2,        /* was queued: cancelled now */
    LLMQ_CANCEL_TOO_LATE = 3,    /* already finished */
} llmq_cancel_result;

/* Cancel job id (hash flag + PUBLISH on <prefix>cancel, atomically). */
llmq_status llmq_cancel(llmq_client *c, const char *id, llmq_cancel_result *result, llmq_err *err);

#endif

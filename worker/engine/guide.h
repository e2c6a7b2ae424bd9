/*
 * guide.h — constrained decoding (structured output) through llguidance,
 * loaded at run time.
 *
 * llguidance is a Rust library; its C API ships as exported symbols of the
 * shared library inside PyPI's `llguidance` wheel.  guide_lib_load finds that
 * file (an explicit path, else $LLMQ_LLGUIDANCE, else where `import
 * llguidance` finds it with the venv's python beside the binary, then
 * python3), loads a libpython first with global symbols (the wheel's library
 * references Python's C API, which the functions used here never call), and
 * builds one llguidance tokenizer for the model from our own tokenizer's
 * token bytes.  Absent or unusable: the caller runs unconstrained and answers
 * constrained requests with guide_lib_load's message.
 *
 * A matcher follows one sequence: a mask of the allowed next tokens before
 * each sampling step, then the sampled token consumed.  The mask is a pure
 * function of the constraint and the tokens the matcher consumed, which is
 * what keeps constrained sampling batch invariant and a resumed job exact
 * (guide_matcher_create, then the ids already generated consumed again).
 *
 * Threads: a guide_lib is built once and read-only afterwards; a matcher is
 * used by one thread at a time (the scheduler's).
 *
 * Ownership: guide_lib_load returns a heap object freed by guide_lib_destroy,
 * which must outlive every matcher made from it.  Strings returned by the
 * accessors live as long as their object.
 */
#ifndef LLMQ_GUIDE_H
#define LLMQ_GUIDE_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "worker/tokenizer/tokenizer.h"

/* The environment variable naming the library (file or folder). */
#define GUIDE_ENV "LLMQ_LLGUIDANCE"
/* How to enable it, for the messages of a worker that runs without. */
#define GUIDE_HOW_TO_ENABLE \
    "start the worker with --llguidance PATH or LLMQ_LLGUIDANCE=PATH (llguidance's _lib*.so), " \
    "or `pip install llguidance` for its python3"

typedef struct guide_lib guide_lib;
typedef struct guide_matcher guide_matcher;

/*
 * Load llguidance and build its tokenizer for a model of `vocab` ids (the
 * logits row; ids the tokenizer lacks are never allowed), eos[0..n_eos) the
 * model's end-of-sequence ids (allowed where the constraint is complete).
 * path: a library file or a folder holding one (_lib*.so); NULL: $LLMQ_LLGUIDANCE,
 * else python's `import llguidance`.  On failure err says what was tried
 * and why, and *out is NULL.
 */
llmq_status guide_lib_load(guide_lib **out, const char *path, const tokenizer *tok, int vocab, const int32_t *eos,
                           int n_eos, llmq_err *err);
void guide_lib_destroy(guide_lib *g); /* NULL ok */
const char *guide_lib_version(const guide_lib *g); /* llguidance's own version string */
const char *guide_lib_path(const guide_lib *g);    /* the library file loaded */
int guide_lib_vocab(const guide_lib *g);

/* Words of a mask for vocab ids: bit (id % 32) of word (id / 32), 1 = allowed. */
static inline size_t guide_mask_words(int vocab) { return ((size_t)vocab + 31) / 32; }

/*
 * A matcher for one constraint: type "json_schema", "regex" or "lark" (the
 * protocol's names, which are llguidance's), data its text.  An invalid
 * constraint is LLMQ_ERR_INVALID with the library's message in err.
 */
llmq_status guide_matcher_create(guide_matcher **out, guide_lib *g, const char *type, const char *data,
                                 llmq_err *err);
void guide_matcher_destroy(guide_matcher *m); /* NULL ok */

/* The allowed next tokens into mask [guide_mask_words(vocab)].  Returns the
 * number of allowed ids (0: nothing can follow), or -1 on a matcher error
 * (guide_matcher_error). */
int guide_matcher_mask(guide_matcher *m, uint32_t *mask);

/* Advance by one sampled token (or by n, as a resume replays them).  -1 when
 * the matcher refuses it (guide_matcher_error says why). */
int guide_matcher_consume(guide_matcher *m, int32_t token);
int guide_matcher_consume_all(guide_matcher *m, const int32_t *tokens, int n);

/* 1 when the constraint is complete and nothing more can follow (the
 * sequence ends with finish "stop"), or the matcher failed. */
int guide_matcher_is_stopped(const guide_matcher *m);
/* The matcher's error message, "" when none. */
const char *guide_matcher_error(guide_matcher *m);

#endif

/*
 * dataset.h — real prompts for llmq-loadtest, from a file in one of the
 * layouts vLLM's `bench serve` reads (--dataset-name):
 *
 *   sharegpt  ShareGPT's layout: records {"conversations": [{"from": "human",
 *             "value": TEXT}, {"from": "gpt", ...}, ...]}; the prompt is the
 *             first human (or "user") turn; "role"/"content" keys are read
 *             too.  Records without such a turn are skipped.
 *   custom    records {"prompt": TEXT}
 *
 * The file is either one JSON array of records (ShareGPT's own files) or
 * JSONL, one record a line (blank lines skipped).  There is no tokenizer on
 * this side: a text prompt's token count is what the server reports in
 * usage.prompt_tokens, and output lengths come from --output-tokens.
 *
 * Also here: the text of a random prompt for endpoints that take no token
 * ids (chat): one common English word per drawn id.
 */
#ifndef LLMQ_LT_DATASET_H
#define LLMQ_LT_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct lt_dataset {
    char **prompts;              /* n prompts, UTF-8 (owned) */
    size_t n;
    size_t skipped;              /* records without a usable prompt */
} lt_dataset;

/* Load path as the layout `name` ("sharegpt" or "custom").  LLMQ_ERR_INVALID
 * (bad layout, no prompt at all) or LLMQ_ERR_IO with err set. */
llmq_status lt_dataset_load(lt_dataset *d, const char *name, const char *path, llmq_err *err);
void lt_dataset_deinit(lt_dataset *d); /* d may be NULL */

/* n words, one per id, separated by spaces, into a new string (NULL when out
 * of memory). */
char *lt_random_text(const int32_t *ids, int32_t n);

#endif

/*
 * logprobs.h — a chunk's `lp` (docs/protocol.md, "Output chunks") in the
 * shapes clients expect: OpenAI completions (tokens / token_logprobs /
 * top_logprobs / text_offset), OpenAI chat (content: [{token, logprob, bytes,
 * top_logprobs}]) and the job API's list of tokens.
 *
 * Token strings.  The gateway has no tokenizer: the worker sends each token's
 * text piece as bytes.  A piece that is valid UTF-8 is its own string;
 * otherwise every byte that is not part of a valid character is written as
 * the four characters `\xHH` (a byte-fallback token <0xE2> reads "\xe2"), as
 * OpenAI does for tokens that are part of a character.  `bytes` (chat, job
 * API) always holds the exact bytes, so a client can join the characters
 * that span several tokens.  A worker without a tokenizer sends no pieces:
 * the string is then "token_id:<id>" (vLLM's --return-tokens-as-token-ids
 * form) and bytes null.  JSON has no -inf: a token the model gives no chance
 * at all reads -9999.0, as at vLLM.
 *
 * Every function only adds to JSON values the caller owns.
 */
#ifndef LLMQ_GW_LOGPROBS_H
#define LLMQ_GW_LOGPROBS_H

#include <jansson.h>
#include <stdint.h>

#include "common/protocol.h"

/* {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
 * (NULL when out of memory). */
json_t *gw_lp_completion_new(void);

/*
 * Completions: append c's tokens to o (from gw_lp_completion_new).
 * top_logprobs gets one {token: logprob} map per token: the top n, plus the
 * sampled token when it is not among them (OpenAI: "up to logprobs + 1").
 * text_offset is the token's character offset in the completion text: the
 * characters begun by the pieces of the tokens before it; *offset carries
 * that count from one chunk to the next.
 */
void gw_lp_completion_add(json_t *o, const proto_chunk *c, int64_t *offset);

/* Chat: append one {token, logprob, bytes, top_logprobs: [{token, logprob,
 * bytes}, ...]} per token of c to the array content. */
void gw_lp_chat_add(json_t *content, const proto_chunk *c);

/* Job API: append one {id, token, logprob, bytes, top_logprobs: [{id, token,
 * logprob, bytes}, ...]} per token of c to the array list. */
void gw_lp_job_add(json_t *list, const proto_chunk *c);

#endif

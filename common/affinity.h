/*
 * affinity.h — the fleet's prefix affinity key (docs/protocol.md "Affinity").
 *
 * A worker group's prefix cache holds the KV of the prompts it ran, so a
 * request whose prompt starts like an earlier one is cheapest on the group
 * that ran that one.  The gateway does not tokenize, so the key is computed
 * from the request's text, the same way by every client: a chain of 64-bit
 * FNV-1a hashes, one per unit of the prompt, each over its parent's hash and
 * the unit:
 *   - the chain starts at FNV-1a of "llmq-affinity-1", then mixes in the
 *     cache_salt (tag 's') and the tools (tag 't') when present: requests
 *     that cannot share KV never share a key;
 *   - messages: one unit per message (role, NUL, content, NUL, tool_calls),
 *     so a conversation's next turn extends the chain of its last one;
 *   - prompt text: one unit per full AFFINITY_CHUNK bytes (a partial last
 *     chunk is not a prefix of what comes after it);
 *   - prompt_ids: one unit per full AFFINITY_CHUNK_IDS ids (little-endian
 *     int32 each).
 * The last AFFINITY_MAX_KEYS of the chain are kept (the longest prefixes),
 * and a prefix_key (explicit stickiness: a conversation or session id) adds
 * one more key after them, hashed from the start with tag 'k'.  The keys
 * travel as the request entry's field `a`: 16 lowercase hex digits each,
 * separated by one space, longest prefix last, the prefix_key's key at the
 * very end.  A worker looks the keys up from the end (docs/protocol.md).
 *
 * FNV-1a is not a cryptographic hash: a client can make its keys collide
 * with another's on purpose, which moves where a request runs and nothing
 * else (the engine's own cache compares the tokens).
 */
#ifndef LLMQ_AFFINITY_H
#define LLMQ_AFFINITY_H

#include <stddef.h>
#include <stdint.h>

#include "common/protocol.h"

#define AFFINITY_FIELD "a"          /* request stream entry: the affinity keys */
#define AFFINITY_CHUNK 256          /* bytes of prompt text per unit */
#define AFFINITY_CHUNK_IDS 64       /* prompt ids per unit */
#define AFFINITY_MAX_KEYS 32        /* chain keys kept (plus the prefix_key's) */
#define AFFINITY_MAX_PREFIX_KEY 256 /* bytes of a prefix_key */
/* a buffer this big holds any field value: 17 bytes per key */
#define AFFINITY_FIELD_MAX ((AFFINITY_MAX_KEYS + 1) * 17)

/*
 * The field `a` of request r (and prefix_key: NULL or "" = none) into out,
 * NUL-terminated.  Returns its length; 0 when the request has no key (no
 * prompt unit complete and no prefix_key, or an operation other than
 * generate), and then the entry carries no field.
 */
size_t affinity_keys(const proto_request *r, const char *prefix_key, char out[AFFINITY_FIELD_MAX]);

#endif

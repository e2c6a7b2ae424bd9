/*
 * toolcall.h — a model's tool-call text to OpenAI `tool_calls`, whole or streamed.
 *
 * The gateway parses the text of a chat job that had tools (docs/protocol.md
 * "Tool calls"); it does not know the model's family, so it recognises the
 * three formats it may meet, which cannot be mistaken for each other:
 *   Hermes / Qwen   [content]<tool_call>{"name": N, "arguments": {...}}</tool_call>...
 *   Mistral         [content][TOOL_CALLS][{"name": N, "arguments": {...}}, ...]
 *                   or the array alone (the whole text: [TOOL_CALLS] is a special
 *                   token, which the worker's text leaves out)
 *   Llama 3.1+      [<|python_tag|>]{"name": N, "parameters": {...}}   (the whole text)
 *
 * One parser serves both ways, so that what a stream sends adds up to what the
 * whole text gives: the content is the text before the first call (white space
 * trimmed at its end), then the calls in order up to the first that is not one
 * (malformed, cut off, a name that is none of the tools, past max_calls), where
 * the calls end: what follows is dropped.  When the first call is not one, the
 * whole text is content, as vLLM's parsers do.  A call's `arguments` is the
 * model's JSON with the white space outside strings dropped (the text it wrote,
 * so that it streams as it comes: re-encoding would need the whole value), or,
 * where the model wrote a JSON string, that string.
 *
 * Streamed, content goes out as it comes except a tail that may begin a call
 * (a prefix of "<tool_call>" or "[TOOL_CALLS]", trailing white space, or
 * anything while the whole text may be a Llama call or a Mistral array); a call goes out as its
 * name (with id and type) once its arguments begin, then its arguments as they
 * come.  Only a call cut off (or malformed) after its arguments began differs
 * from the whole text's reading, which finds no call there: a stream cannot
 * take back what it sent (vLLM's streams do the same).
 */
#ifndef LLMQ_TOOLCALL_H
#define LLMQ_TOOLCALL_H

#include <stddef.h>

#include <jansson.h>

typedef struct toolcall_stream toolcall_stream;

/* tools: the request's OpenAI tools array (borrowed; it must outlive the
 * stream), whose function names a call must name, or NULL for any name.
 * max_calls: at most this many calls (1: parallel_tool_calls false), 0 for no
 * limit.  NULL when out of memory. */
toolcall_stream *toolcall_stream_new(const json_t *tools, int max_calls);
void toolcall_stream_free(toolcall_stream *s); /* NULL ok */

/* What a stream sends for the text fed: content (may hold NUL-free UTF-8 as
 * the text did; content_len 0 = none) and `tool_calls` entries of OpenAI's
 * streamed delta ({"index", "id", "type", "function": {"name", "arguments"}}
 * for a call's first, {"index", "function": {"arguments"}} after), NULL when none. */
typedef struct toolcall_delta {
    char *content; /* malloc'd, NUL-terminated, or NULL */
    size_t content_len;
    json_t *tool_calls;
} toolcall_delta;

/* Feed the next text of the output; final: it is the last (the job ended),
 * held-back content goes out.  d is filled (free with toolcall_delta_clear).
 * -1 when out of memory. */
int toolcall_stream_feed(toolcall_stream *s, const char *text, size_t len, int final, toolcall_delta *d);
void toolcall_delta_clear(toolcall_delta *d);
/* Complete calls so far: with any, a choice that stopped by itself ends with
 * finish_reason "tool_calls". */
size_t toolcall_stream_calls(const toolcall_stream *s);

/* The calls in the whole text[0..len): a new JSON array of OpenAI tool calls
 * ({"id": "call_<24 random>", "type": "function", "function": {"name",
 * "arguments": JSON text}}), or NULL when the text holds no call (or no
 * memory).  With calls, *content_len is the length of text's content before
 * them, white space trimmed at its end (0: the whole output was the calls).
 * tools and max_calls as for toolcall_stream_new. */
json_t *toolcall_parse(const char *text, size_t len, const json_t *tools, int max_calls, size_t *content_len);

#endif

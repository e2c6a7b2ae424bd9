/*
 * toolcall.h — a model's tool-call text to OpenAI `tool_calls`.
 *
 * The gateway parses the text of a chat job that had tools (docs/protocol.md
 * "Tool calls"); it does not know the model's family, so it recognises the
 * three formats it may meet, which cannot be mistaken for each other:
 *   Hermes / Qwen   [content]<tool_call>{"name": N, "arguments": {...}}</tool_call>...
 *   Mistral         [content][TOOL_CALLS][{"name": N, "arguments": {...}}, ...]
 *   Llama 3.1+      [<|python_tag|>]{"name": N, "parameters": {...}}   (the whole text)
 * A text whose call does not parse (a model that stopped inside one) is no
 * call: it stays content, as vLLM's parsers do.
 */
#ifndef LLMQ_TOOLCALL_H
#define LLMQ_TOOLCALL_H

#include <stddef.h>

#include <jansson.h>

/* The calls in text[0..len): a new JSON array of OpenAI tool calls
 * ({"id": "call_<24 random>", "type": "function", "function": {"name", "arguments":
 * JSON text}}), or NULL when the text holds no call (or no memory).  With
 * calls, *content_len is the length of text's content before them, white
 * space trimmed at its end (0: the whole output was the calls). */
json_t *toolcall_parse(const char *text, size_t len, size_t *content_len);

#endif

/*
 * toolcalls.h — the message of a chat choice whose request had tools.
 */
#ifndef LLMQ_GW_TOOLCALLS_H
#define LLMQ_GW_TOOLCALLS_H

#include <stddef.h>

#include <jansson.h>

/* The chat `message` of a choice's text: {"role": "assistant", "content": text},
 * and with tools (the request's OpenAI array, NULL for none) the calls the
 * text holds (common/toolcall.h; at most max_calls, 0 = any number) as
 * `tool_calls`, `content` then the text before them or null.  *finish (the
 * job's finish reason) becomes "tool_calls" when a call was found. */
json_t *gw_chat_message(const char *text, size_t len, const json_t *tools, int max_calls, const char **finish);

/* The finish reason of a choice that ended with `finish` and had n_calls tool
 * calls: "tool_calls" for one that stopped by itself, as OpenAI's. */
const char *gw_tools_finish(const char *finish, size_t n_calls);

#endif

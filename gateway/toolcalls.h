/*
 * toolcalls.h — the message of a chat choice whose request had tools.
 */
#ifndef LLMQ_GW_TOOLCALLS_H
#define LLMQ_GW_TOOLCALLS_H

#include <stddef.h>

#include <jansson.h>

/* The chat `message` of a choice's text: {"role": "assistant", "content": text},
 * and with tools (the request sent some) the calls the text holds
 * (common/toolcall.h) as `tool_calls`, `content` then the text before them or
 * null.  *finish (the job's finish reason) becomes "tool_calls" when a call
 * was found in a choice that stopped by itself, as OpenAI's. */
json_t *gw_chat_message(const char *text, size_t len, int tools, const char **finish);

#endif

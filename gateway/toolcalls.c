/*
 * toolcalls.c — OpenAI tool_calls in a chat choice (see toolcalls.h).
 */
#include "gateway/toolcalls.h"

#include <string.h>

#include "common/toolcall.h"
#include "gateway/gw.h"

const char *gw_tools_finish(const char *finish, size_t n_calls) {
    return n_calls && !strcmp(finish, "stop") ? "tool_calls" : finish;
}

json_t *gw_chat_message(const char *text, size_t len, const json_t *tools, int max_calls, const char **finish) {
    size_t content_len = 0;
    json_t *calls = tools ? toolcall_parse(text ? text : "", text ? len : 0, tools, max_calls, &content_len) : NULL;
    if (!calls) return json_pack("{s:s, s:o}", "role", "assistant", "content", gw_json_text(text, len));
    *finish = gw_tools_finish(*finish, json_array_size(calls));
    return json_pack("{s:s, s:o, s:o}", "role", "assistant", "content",
                     content_len ? gw_json_text(text, content_len) : json_null(), "tool_calls", calls);
}

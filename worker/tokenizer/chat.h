/*
 * chat.h — chat templates: a list of {role, content} messages to one prompt string.
 *
 * llmq does not run Jinja.  It recognises the common template families in a
 * model's tokenizer_config.json "chat_template" (or takes one by name) and renders
 * them in C, byte for byte what transformers' apply_chat_template produces:
 *   llama-2   <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s>...
 *   llama-3   <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>...
 *   mistral   <s>[INST] {user} [/INST]{assistant}</s>...   (Mistral-7B-Instruct v0.1/v0.2)
 *   chatml    <|im_start|>{role}\n{content}<|im_end|>\n...  (+ a default system
 *             message when the template has one, as Qwen2's)
 *   zephyr    <|user|>\n{content}</s>\n...                   (Zephyr, TinyLlama-Chat)
 *   llama-3.1 llama-3's turns after a system turn that always opens with
 *             "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
 *             (Llama 3.1's template, its July 2024 revision: a template that has
 *             "Cutting Knowledge Date")
 *   mistral-v3 <s>[INST] {user}[/INST] {assistant}</s>...     (Mistral-7B-Instruct v0.3:
 *             a template that has [AVAILABLE_TOOLS]; the system message goes
 *             before the last user message when that is the last message)
 * A model whose template is none of these, with no family forced, is an error
 * (LLMQ_ERR_UNSUPPORTED) that says how to force one.
 *
 * A model with no chat template at all gets the default, chatml without a
 * system message (CHAT_DEFAULT_FAMILY): the template transformers applied to
 * such models for years (its class-level `default_chat_template`, removed in
 * v4.43) and llama.cpp's fallback, so the prompts match what those tools gave
 * the same model; the markers are plain text to a tokenizer that lacks them.
 * Error messages name no file (they reach clients); the caller logs paths.
 *
 * The rendered text already holds the BOS text where the family has it: encode it
 * with add_special = 0 (as apply_chat_template(tokenize=True) does).
 *
 * Where a template would raise (llama-2 and mistral need user/assistant turns
 * alternating, starting with user) chat_render returns LLMQ_ERR_INVALID with the
 * template's message.  One deliberate extension: mistral v0.1 refuses a system
 * message; llmq prepends it to the first user message, separated by "\n\n".
 */
#ifndef LLMQ_CHAT_H
#define LLMQ_CHAT_H

#include <stddef.h>

#include "common/status.h"
#include "worker/tokenizer/tokenizer.h"

typedef enum chat_family {
    CHAT_UNKNOWN = 0,
    CHAT_LLAMA2,
    CHAT_LLAMA3,
    CHAT_MISTRAL,
    CHAT_CHATML,
    CHAT_ZEPHYR,
    CHAT_LLAMA31,
    CHAT_MISTRAL3,
} chat_family;

typedef struct chat_msg {
    const char *role;    /* "system", "user", "assistant" (others pass through where the family allows) */
    const char *content; /* UTF-8, NUL-terminated */
    const char *tool_calls; /* NULL, or an assistant turn's OpenAI tool_calls (JSON array text) */
} chat_msg;

#define CHAT_DEFAULT_FAMILY CHAT_CHATML

/* Where a chat_template came from (for the worker's start-up log). */
typedef enum chat_source {
    CHAT_SRC_MODEL = 0,   /* the model's tokenizer_config.json chat_template */
    CHAT_SRC_NAME,        /* forced by family name (--chat-template NAME) */
    CHAT_SRC_FILE,        /* detected from a Jinja file (--chat-template FILE) */
    CHAT_SRC_TEXT,        /* detected from Jinja text given inline (--chat-template '{% ... %}') */
    CHAT_SRC_DEFAULT,     /* the model has none: CHAT_DEFAULT_FAMILY */
} chat_source;

typedef struct chat_template {
    chat_family family;
    chat_source source;   /* set by chat_template_from_tokenizer (CHAT_SRC_MODEL otherwise) */
    char *bos;            /* BOS token text ("<s>", "<|begin_of_text|>"), owned, never NULL */
    char *eos;            /* EOS token text, owned, never NULL */
    char *default_system; /* chatml: system message used when none is given, or NULL */
} chat_template;

/* "llama-2", "llama-3", "mistral", "chatml", "zephyr", "llama-3.1", "mistral-v3"
 * (also "llama2", "llama3", "llama3.1");
 * CHAT_UNKNOWN for anything else. */
chat_family chat_family_by_name(const char *name);
const char *chat_family_name(chat_family f); /* "unknown" for CHAT_UNKNOWN */
/* The family of a Jinja chat template, by its distinctive markers. */
chat_family chat_family_detect(const char *jinja);
/* Comma-separated list of the family names, for messages. */
const char *chat_family_names(void);

/* Build from parts (bos/eos may be NULL = ""); default_system may be NULL. */
llmq_status chat_template_init(chat_template *ct, chat_family f, const char *bos, const char *eos,
                               const char *default_system);
/* Build from a tokenizer.  force (may be NULL or ""): a family name, else the
 * path of a file holding a Jinja chat template, else Jinja text itself (it
 * has "{%" or "{{"); the family of a file or text is detected.  Without
 * force: detected from the model's tokenizer_config.json chat_template, and
 * CHAT_DEFAULT_FAMILY when the model has none.  BOS/EOS texts from
 * tokenizer_config.json; ct->source says which of these it was.  Errors:
 * LLMQ_ERR_INVALID (force is none of the three), LLMQ_ERR_UNSUPPORTED (a
 * template of a family llmq does not know), each saying how to choose one. */
llmq_status chat_template_from_tokenizer(chat_template *ct, const tokenizer *t, const char *force,
                                         llmq_err *err);
void chat_template_deinit(chat_template *ct); /* NULL ok */
/* One line for logs: "chatml (the default: the model has no chat template)". */
void chat_template_describe(const chat_template *ct, const char *force, char *buf, size_t cap);

/* Render n messages; with add_generation_prompt the text ends where the
 * assistant's answer starts.  *out is malloc'd, NUL-terminated, length *len. */
llmq_status chat_render(const chat_template *ct, const chat_msg *msgs, size_t n, int add_generation_prompt,
                        char **out, size_t *len, llmq_err *err);

/* chat_render with OpenAI tools (JSON array text, NULL or "[]" = none), as the
 * family's reference template renders them:
 *   chatml      Qwen2.5's template (Hermes format): the system turn (the given
 *               one, else the template's default, else none: Qwen3's) ends with
 *               a "# Tools" section listing each tool as Python's json.dumps
 *               writes it, assistant turns with tool_calls carry <tool_call>
 *               blocks, and role "tool" turns become <tool_response> blocks in
 *               a user turn;
 *   llama-3.1   Llama 3.1's: "Environment: ipython" in the system turn, the
 *               tools (json.dumps, indent 4) and the JSON call instructions in
 *               the first user turn, a call as {"name": N, "parameters": {...}}
 *               (one per assistant turn), tool turns as ipython turns holding
 *               the result as a JSON string;
 *   mistral-v3  Mistral v0.3's: [AVAILABLE_TOOLS] [...][/AVAILABLE_TOOLS]
 *               before the last user turn, calls as [TOOL_CALLS] [{...,
 *               "id": I}]</s>, tool turns as [TOOL_RESULTS] {"content": C,
 *               "call_id": I}[/TOOL_RESULTS].  Ids are the last 9 characters
 *               of the calls' ids (the template wants 9); a tool turn answers
 *               the calls of the assistant turn before it, in order.
 * Where the template raises (a Llama 3.1 turn with two calls, a Mistral id
 * too short, ...) LLMQ_ERR_INVALID with its message.  Other families with
 * tools: LLMQ_ERR_UNSUPPORTED. */
llmq_status chat_render_tools(const chat_template *ct, const chat_msg *msgs, size_t n, const char *tools,
                              int add_generation_prompt, char **out, size_t *len, llmq_err *err);

/* A Lark grammar (llguidance's) for exactly one call, in the family's syntax,
 * of the function `name` (NULL: any of the tools), its arguments the JSON
 * its `parameters` schema allows.  *out malloc'd.  LLMQ_ERR_INVALID for tools
 * that are not OpenAI's shape or a name that is none of them,
 * LLMQ_ERR_UNSUPPORTED for a family without a tool-call syntax here. */
llmq_status chat_tools_grammar(chat_family f, const char *tools, const char *name, char **out, llmq_err *err);

#endif

#!/usr/bin/env python3
"""Write tests/fixtures/tokenizers/chat_tools.expect.json: conversations with
OpenAI `tools`, assistant `tool_calls` and `tool` turns rendered by Jinja2 with
the model families' own chat templates, as transformers' apply_chat_template
renders them (its `tojson` is json.dumps(x, ensure_ascii=False, indent=...),
its `raise_exception` raises: such cases record the error), and as vLLM calls
them (an OpenAI call's `arguments` JSON text parsed into an object first):

  - Qwen2.5's (the Hermes tool format; chatml with tools in
    worker/tokenizer/chat.c), and, for chatml without a default system
    message, Qwen3's system head (none: the "# Tools" section opens the system
    turn);
  - Llama 3.1's (llama-3.1: JSON calls with "parameters", the tools in the first
    user turn), with and without tools;
  - Mistral 7B Instruct v0.3's (mistral-v3: [AVAILABLE_TOOLS] before the last
    user turn, [TOOL_CALLS], [TOOL_RESULTS]), with and without tools.  Its
    template wants call ids of 9 characters and a `tool_call_id` on each tool
    turn; llmq passes the last 9 characters of an OpenAI id (as vLLM does for
    Mistral), and a tool turn answers the calls of the assistant turn before it
    in order (the protocol's messages carry no tool_call_id): the conversations
    are given to Jinja that way.

tests/unit/test_tok_chat.c checks chat_render_tools against it.

Usage: .venv/bin/python tools/chat_tools_fixtures.py   (needs jinja2: pip install jinja2)
"""
import copy
import json
import pathlib

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

QWEN_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen/Qwen2.5-7B-Instruct tokenizer_config.json chat_template (its tools branch
# and turns; the branch without tools is the chatml one of tok_fixtures.py)
QWEN25 = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- '" + QWEN_DEFAULT + "' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")

# Qwen/Qwen3's system head: the given system message and a blank line, or nothing
QWEN3_HEAD = (
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n"
    "    {%- endif %}\n"
    "    {{- \"# Tools")
QWEN25_HEAD = QWEN25[QWEN25.index("    {{- '<|im_start|>system"):QWEN25.index("\\n\\n# Tools") + len("\\n\\n# Tools")]
QWEN_NODEFAULT = QWEN25.replace(QWEN25_HEAD, QWEN3_HEAD)
assert QWEN_NODEFAULT != QWEN25

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Météo d'une ville — “quoted” \\ slash/",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "城市"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "ratio": {"type": "number", "default": 0.5},
        "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["city"]}}}
NOW = {"type": "function", "function": {"name": "now"}}
# Mistral's template lists a function's keys in their order, strings raw: a
# description after the parameters, a "return" key it leaves out
NOW2 = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}},
                                         "description": "Time \"now\"", "return": {"type": "string"}}}
TOOLSETS = [[WEATHER], [WEATHER, NOW]]
TOOLSETS_MORE = TOOLSETS + [[NOW2], None]  # None: without tools (llama-3.1 and mistral-v3 render both ways)

CALL = {"id": "call_0123abcXYZ", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\", \"days\": 2, \"tags\": [\"a\", \"b\"]}"}}
CALL2 = {"id": "call_def456uvw", "type": "function", "function": {"name": "now", "arguments": "{}"}}
U = {"role": "user", "content": "What's the weather in Zürich?"}
CONVERSATIONS = [
    [U],
    [{"role": "system", "content": "Be brief."}, U],
    [U, {"role": "assistant", "content": "", "tool_calls": [CALL]},
     {"role": "tool", "tool_call_id": "call_0123abcXYZ", "content": "{\"temp\": 3}"}],
    [{"role": "system", "content": "Sys"}, U,
     {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL, CALL2]},
     {"role": "tool", "tool_call_id": "call_0123abcXYZ", "content": "3 °C"},
     {"role": "tool", "tool_call_id": "call_def456uvw", "content": "noon"},
     {"role": "assistant", "content": "It is 3 °C at noon."}, {"role": "user", "content": "Thanks"}],
    [{"role": "tool", "content": "first"}, {"role": "user", "content": "then"},
     {"role": "system", "content": "late system"}],
]
# more for llama-3.1 and mistral-v3: one call answered then a reply and a new
# question (a user turn equal to the last gets the tools too: Mistral's
# template compares the messages), white space to trim, roles out of turn
CONVERSATIONS_MORE = CONVERSATIONS + [
    [{"role": "system", "content": "  Sys  \n"}, {"role": "user", "content": " Hi "},
     {"role": "assistant", "content": None, "tool_calls": [CALL2]},
     {"role": "tool", "tool_call_id": "call_def456uvw", "content": "noon"},
     {"role": "assistant", "content": "  Noon. "}, {"role": "user", "content": " Hi "}],
    [U, {"role": "assistant", "content": "A"}, {"role": "assistant", "content": "B"}],
    [{"role": "system", "content": "S"}],
]

# meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json chat_template, the
# July 2024 revision (date_string "26 Jul 2024" when not given; later revisions
# use strftime_now, today's date, which no fixture can hold).  Hugging Face is
# not reachable from here: the text was taken from a copy of that template in
# public code (a training script setting tokenizer.chat_template to it).
LLAMA31 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# mistralai/Mistral-7B-Instruct-v0.3 tokenizer_config.json chat_template (the
# revision with tools, 2024); as LLAMA31, from a copy in public code (a llama.cpp
# chat handler's presets) since Hugging Face is not reachable from here.
MISTRAL3 = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""


def for_template(msgs, mistral=False):
    """vLLM's step before the template: arguments JSON text -> object; for
    Mistral the ids' last 9 characters, and each tool turn's tool_call_id
    the id of the call it answers (the calls of the assistant turn before, in
    order), as llmq renders them; None content as "" (the protocol's)."""
    msgs = copy.deepcopy(msgs)
    calls, k = [], 0
    for m in msgs:
        if m.get("content") is None:
            m["content"] = ""
        for c in m.get("tool_calls", []):
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
        if mistral and m.get("tool_calls"):
            for c in m["tool_calls"]:
                c["id"] = c["id"][-9:]
            calls, k = m["tool_calls"], 0
        elif mistral and m["role"] == "tool":
            m.pop("tool_call_id", None)
            if k < len(calls):
                m["tool_call_id"] = calls[k]["id"]
                k += 1
        elif mistral:
            calls, k = [], 0
    return msgs


class TemplateError(Exception):
    pass


def raise_exception(msg):
    raise TemplateError(msg)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    out = []
    for name, src, default_system in (("qwen2.5", QWEN25, QWEN_DEFAULT), ("qwen3-head", QWEN_NODEFAULT, None)):
        tpl = env.from_string(src)
        for tools in TOOLSETS:
            for conv in CONVERSATIONS:
                for gen in (False, True):
                    out.append({"template_name": name, "default_system": default_system, "tools": tools,
                                "messages": conv, "add_generation_prompt": gen,
                                "text": tpl.render(messages=for_template(conv), tools=tools,
                                                   add_generation_prompt=gen)})
    for name, src, bos, eos in (("llama-3.1", LLAMA31, "<|begin_of_text|>", "<|eot_id|>"),
                                ("mistral-v3", MISTRAL3, "<s>", "</s>")):
        tpl = env.from_string(src)
        for tools in TOOLSETS_MORE:
            for conv in CONVERSATIONS_MORE:
                for gen in (False, True):
                    case = {"template_name": name, "bos": bos, "eos": eos, "tools": tools, "messages": conv,
                            "add_generation_prompt": gen}
                    kw = {} if tools is None else {"tools": tools}
                    try:
                        case["text"] = tpl.render(messages=for_template(conv, name == "mistral-v3"), bos_token=bos,
                                                  eos_token=eos, add_generation_prompt=gen, **kw)
                    except TemplateError as e:
                        case["error"] = str(e)
                    out.append(case)
    path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/tokenizers/chat_tools.expect.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{path}: {len(out)} renderings")


if __name__ == "__main__":
    main()

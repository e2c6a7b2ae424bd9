#!/usr/bin/env python3
"""Write tests/fixtures/tokenizers/chat_tools.expect.json: conversations with
OpenAI `tools`, assistant `tool_calls` and `tool` turns rendered by Jinja2 with
Qwen2.5's chat template (the Hermes tool format; chatml with tools in
worker/tokenizer/chat.c), as transformers' apply_chat_template renders it
(its `tojson` is json.dumps(x, ensure_ascii=False)), and as vLLM calls it
(an OpenAI call's `arguments` JSON text parsed into an object first).  Two
system heads: Qwen2.5's (a default system message) and, for chatml without a
default system message, Qwen3's (none: the "# Tools" section opens the system
turn).  tests/unit/test_tok_chat.c checks chat_render_tools against it.

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
TOOLSETS = [[WEATHER], [WEATHER, NOW]]

CALL = {"id": "call_abc", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\", \"days\": 2, \"tags\": [\"a\", \"b\"]}"}}
CALL2 = {"id": "call_def", "type": "function", "function": {"name": "now", "arguments": "{}"}}
U = {"role": "user", "content": "What's the weather in Zürich?"}
CONVERSATIONS = [
    [U],
    [{"role": "system", "content": "Be brief."}, U],
    [U, {"role": "assistant", "content": "", "tool_calls": [CALL]},
     {"role": "tool", "tool_call_id": "call_abc", "content": "{\"temp\": 3}"}],
    [{"role": "system", "content": "Sys"}, U,
     {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL, CALL2]},
     {"role": "tool", "tool_call_id": "call_abc", "content": "3 °C"},
     {"role": "tool", "tool_call_id": "call_def", "content": "noon"},
     {"role": "assistant", "content": "It is 3 °C at noon."}, {"role": "user", "content": "Thanks"}],
    [{"role": "tool", "content": "first"}, {"role": "user", "content": "then"},
     {"role": "system", "content": "late system"}],
]


def for_template(msgs):
    """vLLM's step before the template: arguments JSON text -> object."""
    msgs = copy.deepcopy(msgs)
    for m in msgs:
        for c in m.get("tool_calls", []):
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
    return msgs


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
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
    path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/tokenizers/chat_tools.expect.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{path}: {len(out)} renderings")


if __name__ == "__main__":
    main()

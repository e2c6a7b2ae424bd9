#!/usr/bin/env python3
"""tok_fixtures.py — golden fixtures for llmq's C tokenizer, made with Hugging Face `tokenizers`.

Writes tests/fixtures/tokenizers/:
  corpus.json                 the test strings (>= 300): prose, code, numbers, runs of
                              spaces/tabs/newlines, accents, CJK, emoji, special-token text, ""
  <name>/tokenizer.json       small tokenizers trained here (committed):
     bl-llama3   byte-level BPE, Llama 3 split regex + ByteLevel(use_regex=false),
                 ignore_merges, Llama 3 style specials and BOS template
     spm-bf      SentencePiece-style BPE like Llama 2: Prepend/Replace normalizer,
                 byte_fallback + fuse_unk, <s> template, Replace/ByteFallback/Fuse/Strip decoder
     misc-meta   NFKC + Lowercase + Replace(regex) normalizer, Digits + Split + Metaspace
                 pre-tokenizer, unk without fuse, lstrip/rstrip/single_word added tokens,
                 "<s> $A </s>" template, Metaspace decoder
     bl-roberta  ByteLevel(add_prefix_space, use_regex) pre-tokenizer, Roberta post-processor
     falcon-like Falcon's Punctuation + ByteLevel + Digits + Split pre-tokenizers, NFC
     ws-suffix   WhitespaceSplit + Whitespace, continuing_subword_prefix/end_of_word_suffix,
                 NFD/Strip/NFC, Bert post-processor, no decoder (tokens joined by " ")
  <name>.expect.json          for every corpus string: ids without and with special tokens,
                              decodings (keep / skip special tokens; a field equal to "ids"
                              or "decoded" is left out); plus decodings of random id
                              sequences (byte runs, specials, invalid UTF-8)
  chat.expect.json            chat templates of five families rendered by Jinja2 (as
                              transformers' apply_chat_template) on a set of conversations
  stories260K.expect.json     the same for ../shared/models/stories260K/tokenizer.json (the
                              tokenizer itself is read from ../shared at test time)

Run from the repo root:  .venv/bin/python tools/tok_fixtures.py   (needs `tokenizers`, and
`jinja2` for the chat expectations)
Deterministic for a given `tokenizers` version and Python stdlib (the training text),
except ws-suffix, whose training breaks ties differently from run to run; the committed
files are the reference (the expectations are always made from the saved tokenizer).
"""
import json
import os
import pathlib
import random
import sys
import sysconfig

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tokenizers"
SHARED = pathlib.Path(os.environ.get("LLMQ_SHARED", ROOT.parent / "shared"))

LLAMA3_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
              r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# The chat template of meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

IGNORE_MERGES_WORDS = [" tokenization", " llmq", " xyzzy", " Übergrößenträger", "😀😀"]


def _byte_chars():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
          list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_CHARS = _byte_chars()

# ---------------------------------------------------------------- chat templates

# Reference templates as published in the models' tokenizer_config.json.
CHAT_TEMPLATES = {
    "llama-2": LLAMA2_TEMPLATE,
    "llama-3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ "
        "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    "mistral": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
        "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"),
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "chatml-qwen2": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "zephyr": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"),
}
CHAT_SPECIALS = {"llama-2": ("<s>", "</s>"), "llama-3": ("<|begin_of_text|>", "<|eot_id|>"),
                 "mistral": ("<s>", "</s>"), "chatml": ("", "<|im_end|>"),
                 "chatml-qwen2": ("", "<|im_end|>"), "zephyr": ("<s>", "</s>")}
CONVERSATIONS = [
    [("user", "Hello!")],
    [("system", "You are terse."), ("user", "What is 2+2?")],
    [("user", "Hi"), ("assistant", "Hello, how can I help?"), ("user", "Tell me a joke.")],
    [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hey!"), ("user", "Bye")],
    [("user", "  padded with spaces \n\t"), ("assistant", "\n answer \u3000"), ("user", "\x1ccontrol\x1f")],
    [("user", "Ünïcödé 你好 😀"), ("assistant", "")],
    [("user", "")],
    [("assistant", "I start?")],
    [("user", "a"), ("user", "b")],
    [("system", "only system")],
    [("tool", "a tool result"), ("user", "next")],
]


def chat_expectations():
    """Render every conversation with every template through Jinja as transformers does."""
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        print("jinja2 missing: chat expectations not regenerated (pip install jinja2)", file=sys.stderr)
        return None

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    out = []
    for name, src in CHAT_TEMPLATES.items():
        tpl = env.from_string(src)
        bos, eos = CHAT_SPECIALS[name]
        for conv in CONVERSATIONS:
            msgs = [{"role": r, "content": c} for r, c in conv]
            for gen in (False, True):
                case = {"template_name": name, "template": src, "bos": bos, "eos": eos,
                        "messages": msgs, "add_generation_prompt": gen}
                try:
                    case["text"] = tpl.render(messages=msgs, add_generation_prompt=gen,
                                              bos_token=bos, eos_token=eos)
                except jinja2.exceptions.TemplateError as e:
                    case["error"] = str(e)
                out.append(case)
    return out


# ---------------------------------------------------------------- training text

MULTI = [
    "Le renard brun rapide saute par-dessus le chien paresseux. Où est la bibliothèque ?",
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, Äpfel.",
    "El rápido zorro marrón salta sobre el perro perezoso. ¿Dónde está la estación?",
    "Быстрая коричневая лиса прыгает через ленивую собаку. Привет, мир!",
    "Η γρήγορη καφέ αλεπού πηδά πάνω από το τεμπέλικο σκυλί.",
    "素早い茶色の狐がのろまな犬を飛び越える。こんにちは世界。",
    "快速的棕色狐狸跳过了懒狗。你好，世界！今天天气很好。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘습니다. 안녕하세요 세계.",
    "Tiếng Việt có dấu: Xin chào thế giới, cảm ơn bạn rất nhiều.",
    "नमस्ते दुनिया, यह एक परीक्षण वाक्य है।",
    "مرحبا بالعالم، هذه جملة اختبار.",
    "שלום עולם, זה משפט בדיקה.",
    "สวัสดีชาวโลก นี่คือประโยคทดสอบ",
    "I'm sure you're right; we'll see what they've done. It's John's car, isn't it?",
    "Numbers: 3 33 333 3333 1234567890 3.14159 2,718 -42 +7 1e-9 0x1F 2024-05-06 12:34:56",
    "Emoji: 😀 😃 👍🏽 ❤️ 🇫🇷 👨‍👩‍👧‍👦 🎉🎉🎉",
]


def training_text(limit_bytes=1_500_000):
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    out, total = [], 0
    for p in sorted(stdlib.glob("*.py")):
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        out.extend(t.splitlines())
        total += len(t)
        if total > limit_bytes:
            break
    for _ in range(40):
        out.extend(MULTI)
    return out


# ---------------------------------------------------------------- test corpus

def corpus():
    c = [
        "", " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", " \n", "\t\n", " \t \n ",
        "\r\n", "a\r\nb", "Hello world", " Hello world", "Hello World", " Hello World",
        " Hello World!", "Hello, world!", " Hello, world!", " this is 🦙.cpp", "w048 7tuijk dsdfhu",
        "нещо на Български", "ិ", "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ (only emoji that has its own token)",
        "Hello", " Hello", "  Hello", "   Hello", "    Hello", "    Hello\n    Hello",
        " (", "\n =", "' era", "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
        "3", "33", "333", "3333", "33333", "333333", "3333333", "33333333", "333333333",
        "1234567890", "3.14159", "1,000,000", "-42", "+7", "1e-9", "0x1F", "2024-05-06T12:34:56Z",
        "$19.99", "100%", "½ ¾ ² ³ ①②③ ⅷ", "٣٤٥", "١٢٣ and ４５６",
        "I'm", "you're", "WE'LL", "'s", "'S 'RE 'M 'll 'D 'Ve 'lL", "don't stop", "rock 'n' roll",
        "''''", "\"\"\"quoted\"\"\"", "``code``", "a  b", "a   b", "a\t\tb", "a \t b", "a\n\nb",
        "   leading spaces", "trailing spaces   ", "  both  ", "mid    dle", "\n\n\nnewlines first",
        "tabs\tin\tbetween", "x" * 64, " " * 40, "\n" * 20, "\t" * 10, "ab" * 50,
        "café", "naïve", "Ångström", "résumé", "e\u0301", "cafe\u0301", "A\u030a", "ﬁ ﬂ ﬀ",
        "ＡＢＣ１２３", "Ⅻ", "㍿", "ǅ", "İstanbul", "ΣΑΣ σας", "ß STRASSE", "ǰ",
        "Größe", "Zürich", "Ærøskøbing", "ça va", "Sí señor", "Đà Nẵng",
        "你好世界", "日本語のテキスト", "한국어 텍스트", "中文，标点。", "カタカナ ひらがな 漢字",
        "𠀋𠂉𪚥", "鬱", "テスト test テスト",
        "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇩🇪", "❤️", "🦙", "🎉🎉🎉", "smile 😀 please", "😀😀",
        "<s>", "</s>", "<unk>", "Hello<s>world", "<s>Hello</s>", "a</s> b", " <s> ", "<s> <s>",
        "<|begin_of_text|>hi", "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "<|endoftext|>", "Hello<|endoftext|>world", "<|im_start|>user\nhi<|im_end|>",
        "[INST] hello [/INST]", "<<SYS>>\nsys\n<</SYS>>", "<mask>", "x <mask> y", "[SEP] z",
        "hello world", "Hello World again", "say hello worlds", "<tool_call>", "a<tool_call>b",
        "<s", "s>", "</", "<|", "|>", "<0x41>", "<0xZZ>",
        "\u00a0", "a\u00a0b", "\u3000", "a\u2028b", "a\u200bb", "\u180e", "\u2009thin\u2009",
        "\x00", "a\x00b", "\x7f", "\x1b[31mred\x1b[0m", "\u0085", "\ufeffbom", "\ufffd",
        "▁", "▁▁", "a▁b", " ▁ ", "Ġ", "Ċ", "ĠĠ",
        "def f(x):\n    return x * 2\n", "int main(void) { return 0; }",
        "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
        "if __name__ == \"__main__\":\n    main()", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "SELECT * FROM users WHERE id = 42;", "<html><body><p>Hi</p></body></html>",
        "#include <stdio.h>", "x = y ** 2 // 3 % 4", "a->b->c", "::std::vector<int>", "$HOME/.config",
        "https://example.com/path?q=1&r=two#frag", "user@example.com", "C:\\Windows\\System32",
        "tokenization with llmq", "the xyzzy word", "Übergrößenträger tokenization", "😀😀😀",
        "λx. x + 1", "∀x ∈ ℝ: x² ≥ 0", "→ ← ↑ ↓", "©®™", "•·…—–", "¿¡", "«guillemets»", "„quotes“",
    ]
    prose = [
        "The quick brown fox jumps over the lazy dog.",
        "Once upon a time, there was a little girl named Lily. She loved to play outside.",
        "It was the best of times, it was the worst of times.",
        "In the beginning God created the heaven and the earth.",
        "Tom and his dog went to the park. They played with a big red ball all day.",
        "She sells seashells by the seashore, and the shells she sells are surely seashells.",
        "To be, or not to be, that is the question.",
        "The mitochondria is the powerhouse of the cell.",
        "Please don't hesitate to contact us at support@example.org if you have any questions.",
        "Large language models predict the next token given the previous ones.",
        "A journey of a thousand miles begins with a single step.",
        "The rain in Spain stays mainly in the plain.",
        "Colorless green ideas sleep furiously.",
        "He said, \"I'll be back by 5 p.m.\" — but he wasn't.",
        "Mr. and Mrs. Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal.",
        "All happy families are alike; each unhappy family is unhappy in its own way.",
        "Call me Ishmael.",
        "The sky above the port was the color of television, tuned to a dead channel.",
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
        "Lily and Ben were friends. They liked to share their toys and snacks.",
    ]
    c.extend(prose)
    c.extend(MULTI)
    c.append(" ".join(prose))                       # one long text
    c.append("\n\n".join(prose[:8]) + "\n")
    c.append(("word " * 300).strip())              # long repetitive text
    c.append("\n".join(f"line {i}: value={i * 37 % 101}" for i in range(40)))
    # Random strings mixing scripts, whitespace and specials (fixed seed).
    atoms = ["a", "b", "the", " ", "  ", "\t", "\n", "é", "ü", "ß", "中", "文", "😀", "👍🏽", "1", "23",
             "456", "'s", "'ll", ".", ",", "!", "?", "-", "_", "(", ")", "<s>", "</s>", "<unk>",
             "<|eot_id|>", "<|endoftext|>", "<mask>", "▁", "Ġ", "\u00a0", "\u3000", "ﬁ", "Ω", "я",
             "ก", "ि", "\u0301", "\r", "hello", " world", "Hello", "World", "<tool_call>", "<",
             ">", "|", "0x", "\x00"]
    rnd = random.Random(1234)
    for _ in range(170):
        n = rnd.randint(1, 14)
        c.append("".join(rnd.choice(atoms) for _ in range(n)))
    seen, out = set(), []
    for s in c:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# ---------------------------------------------------------------- tokenizers

def train_bl_llama3(lines):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=1200, min_frequency=2, special_tokens=specials,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             show_progress=False)
    tok.train_from_iterator(lines, tr)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    # Words in the vocab that no merge sequence builds: only ignore_merges finds them
    # whole (Llama 3's real vocab has such entries).
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    for w in IGNORE_MERGES_WORDS:
        bl = "".join(BYTE_CHARS[b] for b in w.encode("utf-8"))
        if bl not in vocab:
            vocab[bl] = max(vocab.values()) + 1
    tok = Tokenizer.from_str(json.dumps(j))
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=True)])
    cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
           "tokenizer_class": "PreTrainedTokenizerFast",
           "chat_template": "{% set loop_messages = messages %}{% for message in loop_messages %}"
                            "{% set content = '<|start_header_id|>' + message['role'] + "
                            "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"
                            "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                            "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                            "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"}
    return tok, cfg


def train_spm_bf(lines):
    """Llama 2 layout: <unk> <s> </s>, 256 byte tokens, then the learned pieces."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # Train on ▁-prefixed words like SentencePiece does, then drop the pre-tokenizer.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tr = trainers.BpeTrainer(vocab_size=900, min_frequency=2, limit_alphabet=90,
                             show_progress=False)
    tok.train_from_iterator(lines, tr)
    learned = json.loads(tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                     byte_fallback=True)
    out = Tokenizer(bpe)
    out.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    out.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    out.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t in ("<unk>", "<s>", "</s>")])
    out.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", 1)])
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
           "eos_token": "</s>", "unk_token": "<unk>", "legacy": True,
           "tokenizer_class": "LlamaTokenizer",
           "chat_template": LLAMA2_TEMPLATE}
    return out, cfg


def train_misc_meta(lines):
    tok = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[\x{2018}\x{2019}`]"), "'")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split("-", behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"[.,;:!?]+"), behavior="merged_with_previous"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    specials = ["[UNK]", "<s>", "</s>"]
    tr = trainers.BpeTrainer(vocab_size=700, min_frequency=2, limit_alphabet=70,
                             special_tokens=specials, show_progress=False)
    tok.train_from_iterator(lines, tr)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
                            AddedToken("[SEP]", lstrip=False, rstrip=True, normalized=False, special=True)])
    tok.add_tokens([AddedToken("hello world", single_word=True, normalized=True, special=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "[UNK]",
           "tokenizer_class": "PreTrainedTokenizerFast",
           "chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                            "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"}
    return tok, cfg


def train_bl_roberta(lines):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tr = trainers.BpeTrainer(vocab_size=800, min_frequency=2, special_tokens=specials,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             show_progress=False)
    tok.train_from_iterator(lines, tr)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")),
                                                      trim_offsets=True, add_prefix_space=True)
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "tokenizer_class": "RobertaTokenizer"}
    return tok, cfg


def train_falcon_like(lines):
    """Falcon's layout: Punctuation, ByteLevel, Digits and a 3-digit Split."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation(behavior="contiguous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split(Regex("[0-9][0-9][0-9]"), behavior="isolated")])
    tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=700, min_frequency=2, special_tokens=[">>ABSTRACT<<", "<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, tr)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    cfg = {"eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, cfg


def train_ws_suffix(lines):
    """Whitespace pre-tokenizers, subword prefix and word suffix, unk, no decoder."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##",
                               end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Strip(), normalizers.NFC()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Whitespace()])
    tr = trainers.BpeTrainer(vocab_size=900, min_frequency=2, special_tokens=["[UNK]", "[CLS]", "[SEP]"],
                             continuing_subword_prefix="##", end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(lines, tr)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, cfg


# ---------------------------------------------------------------- expectations

def random_id_seqs(tok, rnd, count=60):
    """Id sequences no encoder would produce: byte tokens in odd orders, specials mid-text."""
    n = tok.get_vocab_size(with_added_tokens=True)
    vocab = tok.get_vocab(with_added_tokens=True)
    byte_ids = sorted(i for t, i in vocab.items() if len(t) == 6 and t.startswith("<0x") and t.endswith(">"))
    seqs = []
    for k in range(count):
        ln = rnd.randint(0, 12)
        s = []
        for _ in range(ln):
            r = rnd.random()
            if byte_ids and r < 0.35:
                s.append(rnd.choice(byte_ids))
            else:
                s.append(rnd.randrange(n))
        seqs.append(s)
    return seqs


def expectations(tok, texts, rnd):
    cases = []
    for s in texts:
        plain = tok.encode(s, add_special_tokens=False)
        spec = tok.encode(s, add_special_tokens=True)
        c = {"ids": plain.ids, "decoded": tok.decode(plain.ids, skip_special_tokens=False)}
        # Left out when equal to "ids" / "decoded", to keep the files small.
        if spec.ids != plain.ids:
            c["ids_special"] = spec.ids
        for key, ids, skip in (("decoded_special", spec.ids, False), ("decoded_skip", spec.ids, True)):
            d = tok.decode(ids, skip_special_tokens=skip)
            if d != c["decoded"]:
                c[key] = d
        cases.append(c)
    decodes = []
    for ids in random_id_seqs(tok, rnd):
        decodes.append({"ids": ids,
                        "decoded": tok.decode(ids, skip_special_tokens=False),
                        "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    return {"tokenizers_version": __import__("tokenizers").__version__,
            "cases": cases, "decodes": decodes}


def dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def main():
    texts = corpus()
    assert len(texts) >= 300, len(texts)
    dump(OUT / "corpus.json", texts)
    lines = training_text()
    for name, fn in (("bl-llama3", train_bl_llama3), ("spm-bf", train_spm_bf),
                     ("misc-meta", train_misc_meta), ("bl-roberta", train_bl_roberta),
                     ("falcon-like", train_falcon_like), ("ws-suffix", train_ws_suffix)):
        tok, cfg = fn(lines)
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        tok.save(str(d / "tokenizer.json"), pretty=False)
        dump(d / "tokenizer_config.json", cfg)
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))  # what the C side will read
        if name == "bl-llama3":  # make sure ignore_merges is exercised
            j = json.loads(tok.to_str())
            j["model"]["ignore_merges"] = False
            plain = Tokenizer.from_str(json.dumps(j))
            n = sum(tok.encode(s).ids != plain.encode(s).ids for s in texts)
            print(f"bl-llama3: ignore_merges changes {n} corpus encodings", file=sys.stderr)
            assert n > 0
        dump(OUT / f"{name}.expect.json", expectations(tok, texts, random.Random(name)))
        print(f"{name}: vocab {tok.get_vocab_size()}", file=sys.stderr)
    chat = chat_expectations()
    if chat is not None:
        dump(OUT / "chat.expect.json", chat)
        print(f"chat: {len(chat)} renderings", file=sys.stderr)
    stories = SHARED / "models" / "stories260K" / "tokenizer.json"
    if stories.is_file():
        tok = Tokenizer.from_file(str(stories))
        dump(OUT / "stories260K.expect.json", expectations(tok, texts, random.Random("stories")))
        print("stories260K: expectations written", file=sys.stderr)
    else:
        print(f"{stories} absent: stories260K expectations not regenerated", file=sys.stderr)
    print(f"{len(texts)} corpus strings -> {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()

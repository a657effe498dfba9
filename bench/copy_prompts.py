"""Copy-heavy prompts for the speculative benchmarks: the output repeats
much of the input.

`EDIT_PROMPTS` (the default set) are chat requests to correct, rename, fix
or reformat a given text or code and write it out again, as a user would
ask; generation stops at the model's end token, so the output is the edited
text. `RAW_COPY_PROMPTS` (the set of earlier rounds) are short raw
completions run for a fixed token count: past the end of the copied text
the model writes freely, so they mix copying with open text.

Each entry is (name, text, chat).
"""

PARAGRAPH = (
    "The city councel voted on Monday to extend the opening hours of the public libary. Starting next month, the "
    "main branch will stay open untill nine in the evening on weekdays, and the two smaller branches will open on "
    "Sundays for the first time. The decision follows a survey in wich more than two thousand residents asked for "
    "longer hours, especialy students who need a quiet place to study after school. The extra staff will be payed "
    "from the cultural budget, which was increased by four percent this year. Some members of the council argued "
    "that the money would be better spent on repairing the roads, but the motion passed with a clear majorty. The "
    "library will also start lending laptops and tablets to residents who do not have one at home.")

ORDERS_CODE = '''import json
from pathlib import Path


def load_orders(path):
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError("expected a list of orders")
    totals = {}
    for order in data:
        customer = order["customer"]
        amount = float(order["amount"])
        if amount < 0:
            raise ValueError(f"negative amount for {customer}")
        totals[customer] = totals.get(customer, 0.0) + amount
    return totals


def print_report(path):
    totals = load_orders(path)
    for customer, total in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{customer:20s} {total:10.2f}")
    print(f"{'all':20s} {sum(totals.values()):10.2f}")
'''

STATS_CODE = '''function average(values) {
  if (values.length === 0) {
    return 0;
  }
  let sum = 0;
  for (let i = 0; i <= values.length; i++) {
    sum += values[i];
  }
  return sum / values.length;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  if (sorted.length % 2 === 0) {
    return (sorted[mid - 1] + sorted[mid]) / 2;
  }
  return sorted[mid];
}
'''

EVENTS = """- Team meeting on March 3, 2025 in room 204
- Budget review on March 10, 2025 with the finance team
- Product launch on April 1, 2025 in the main hall
- Customer workshop on April 15, 2025, online
- Quarterly report due on April 30, 2025
- Summer party on June 20, 2025 at the lake
- Office closed from August 4, 2025 to August 15, 2025
- Annual planning on September 8, 2025 in room 101"""

EDIT_PROMPTS = [
    ("edit-typos", "Correct the spelling mistakes in this paragraph. Write out the corrected paragraph and nothing "
                   f"else.\n\n{PARAGRAPH}", True),
    ("edit-rename", "Rename the function `load_orders` to `read_order_totals` in this code. Write out the whole "
                    f"changed code and nothing else.\n\n```python\n{ORDERS_CODE}```", True),
    ("edit-bugfix", "There is a bug in this code. Write out the whole corrected code and nothing else.\n\n"
                    f"```javascript\n{STATS_CODE}```", True),
    ("edit-dates", "Rewrite this list with every date in the format YYYY-MM-DD, keeping everything else as it is. "
                   f"Write out the list and nothing else.\n\n{EVENTS}", True),
]

_CODE = ('def load_config(path):\n    with open(path) as f:\n        data = json.load(f)\n'
         '    if "name" not in data:\n        raise ValueError("missing name")\n    return data\n')
_TEXT = ("The committee met on Tuesday to review the budget. It approved the new library, postponed the "
         "road repairs to spring, and asked the treasurer for a report on the pool's running costs.")
RAW_COPY_PROMPTS = [
    ("copy-code-rename", f"{_CODE}\n# The same function, with `path` renamed to `config_path`:\n", False),
    ("copy-code-repeat", f"{_CODE}\n# An exact copy of the function above:\n", False),
    ("copy-quote", f"{_TEXT}\n\nQuote the first two sentences of the text above word for word:\n", False),
    ("copy-summary", f"{_TEXT}\n\nIn short: the committee met on Tuesday to", False),
]

COPY_SETS = {"edit": EDIT_PROMPTS, "raw": RAW_COPY_PROMPTS}


def prompt_ids(tok, template: str, text: str, chat: bool) -> list[int]:
    """The token ids specee decodes from: chat prompts in the model's template."""
    from specee.tokenizer.chat_template import chat_prompt_ids

    return chat_prompt_ids(tok, template, [{"role": "user", "content": text}]) if chat \
        else tok.encode(text, parse_special=False)


def prompt_text(tok, template: str, text: str, chat: bool) -> str:
    """The same prompt as text for llama.cpp's tools (they parse special tokens)."""
    from specee.tokenizer.chat_template import render_chat, special_texts

    return render_chat(template, [{"role": "user", "content": text}], **special_texts(tok)) if chat else text


def add_prompt_arguments(parser) -> None:
    """-n, --copy-set and --edit-max, as every speculative benchmark takes them."""
    parser.add_argument("-n", type=int, default=96, help="tokens per raw prompt (no stop at end tokens)")
    parser.add_argument("--copy-set", choices=sorted(COPY_SETS), default="edit",
                        help="copy-heavy prompts: chat edit requests (stop at the end token) or the short raw "
                             "completions of earlier rounds")
    parser.add_argument("--edit-max", type=int, default=320,
                        help="most tokens per chat prompt (they stop at the end token)")


def max_tokens(args, chat: bool) -> int:
    """The most tokens a prompt may generate (add_prompt_arguments)."""
    return args.edit_max if chat else args.n


def token_budget(args, tok, chat: bool) -> tuple[int, tuple]:
    """(most tokens, stop ids) for a prompt: chat prompts stop at the end token."""
    return max_tokens(args, chat), tuple(tok.eot_ids) if chat else ()

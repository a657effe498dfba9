"""Ten varied prompts for side-by-side runs: stories, code, maths, chat.

Each is (name, text, chat): chat prompts are wrapped in the model's own chat
template before tokenizing.
"""

PROMPTS = [
    ("story-dragon", "Once upon a time, in a village at the edge of a great forest, there lived a young girl who", False),
    ("story-robot", "The old robot had been alone in the abandoned factory for years. One morning,", False),
    ("code-fib", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", False),
    ("code-sort", "# Python: sort a list of dictionaries by the 'age' key\npeople = [", False),
    ("code-js", "// JavaScript function that debounces another function\nfunction debounce(fn, wait) {", False),
    ("math-word", "Question: A farmer has 17 sheep and buys 5 more, then sells 8. How many sheep does he have?\nAnswer:", False),
    ("math-algebra", "Solve for x: 3x + 7 = 22. Show your steps.\nStep 1:", False),
    ("chat-capital", "What is the capital of France, and what is it famous for?", True),
    ("chat-advice", "Give me three tips for learning to play the guitar.", True),
    ("chat-explain", "Explain in simple words how a rainbow forms.", True),
]

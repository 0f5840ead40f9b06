"""The web chat at / (Gradio), laid out like ShareGPT4V's demo: an image, a question box, the
streamed answer, sliders for temperature / top-p / max output tokens, regenerate and clear.

It calls the same `ChatService` as the API, in process: a question asked here gets the answer
the API gives for the same image, conversation and settings.
"""

from __future__ import annotations

import gradio as gr

from sgv_jax.serve.protocol import BadRequest, ChatRequest, render_conversation
from sgv_jax.serve.scheduler import QueueFull
from sgv_jax.serve.service import ChatService

TITLE = "sgv-jax: chat about an image"


def _text_of(content) -> str:
    """A Chatbot message's text (Gradio 6 hands content back as a list of typed parts)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)


def _turns(history: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], _text_of(m["content"])) for m in history]


def build_web_chat(service: ChatService) -> gr.Blocks:
    async def answer(history, image, temperature, top_p, max_tokens):
        """Streams the assistant's reply to the conversation's last user turn."""
        if not history or history[-1]["role"] != "user":
            yield history
            return
        try:
            prompt = render_conversation(service.template, _turns(history), image is not None)
            request = ChatRequest(prompt, image, max_tokens=int(max_tokens),
                                  temperature=float(temperature), top_p=float(top_p))
            history = history + [{"role": "assistant", "content": ""}]
            async for event in service.complete(request):
                if event.kind == "text":
                    history[-1]["content"] = _text_of(history[-1]["content"]) + event.text
                    yield history
                elif event.kind == "error":
                    raise gr.Error(event.text)
        except (BadRequest, QueueFull) as e:
            raise gr.Error(str(e)) from None
        yield history

    def ask(question, history):
        if not question.strip():
            return "", history
        return "", (history or []) + [{"role": "user", "content": question}]

    def drop_last_answer(history):
        if history and history[-1]["role"] == "assistant":
            history = history[:-1]
        return history

    with gr.Blocks(title=TITLE) as blocks:
        gr.Markdown(f"## {TITLE}\nModel `{service.model_name}`, template `{service.template}`. "
                    "Upload an image, ask a question, press Enter or Send.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", label="Image", elem_id="image")
                # The defaults of LLaVA's gradio_web_server.py, which ShareGPT4V's demo keeps
                # (temperature 0.2, top-p 0.7, 512 tokens); top-p starts at 0.1, as 0 is invalid.
                temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.1, label="Temperature",
                                        elem_id="temperature")
                top_p = gr.Slider(0.1, 1.0, value=0.7, step=0.1, label="Top P", elem_id="top_p")
                max_tokens = gr.Slider(1, 1024, value=512, step=1, label="Max output tokens",
                                       elem_id="max_tokens")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=480)
                question = gr.Textbox(label="Question", placeholder="Ask about the image",
                                      elem_id="question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    regenerate = gr.Button("Regenerate", elem_id="regenerate")
                    clear = gr.Button("Clear", elem_id="clear")
        settings = [chatbot, image, temperature, top_p, max_tokens]
        for trigger in (question.submit, send.click):
            trigger(ask, [question, chatbot], [question, chatbot]).then(answer, settings, chatbot)
        regenerate.click(drop_last_answer, chatbot, chatbot).then(answer, settings, chatbot)
        clear.click(lambda: ([], None, ""), None, [chatbot, image, question])
    return blocks

"""The web chat in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright
through `executable_path`) uploads an image, asks, and reads the streamed answer, which must
equal the API's answer; then regenerate and clear."""

import os
import shutil
import time

import httpx
import pytest

from tests.serve_helpers import chat_body, running_server
from tests.test_generate_helpers import write_checkpoint, write_images

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
QUESTION = "What is in the picture?"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_browser")
    ckpt = write_checkpoint(str(folder))
    image = write_images(str(folder / "images"), 1)[0]
    with running_server(ckpt, "--max-batch", "2", log_path=str(folder / "server.log")) as url:
        yield url, image


@pytest.fixture(scope="module")
def page():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-gpu"])
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


def set_number(page, elem_id: str, value) -> None:
    """A Gradio slider's number box (typing there moves the slider)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def bot_messages(page) -> list[str]:
    return page.locator("#chatbot [data-testid=bot]").all_inner_texts()


def wait_for_answer(page, want: str, timeout: float = 120) -> list[str]:
    """Polls the last bot message until it equals `want`; returns the texts it showed."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = bot_messages(page)
        if texts and (not seen or seen[-1] != texts[-1]):
            seen.append(texts[-1])
        if texts and texts[-1] == want:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"the page shows {seen[-1:]!r}, the API answered {want!r}")


def test_browser_chat_streams_the_api_answer(server, page, tmp_path):
    url, image = server
    api = httpx.post(url + "/v1/chat/completions", timeout=120, json=chat_body(
        QUESTION, image, temperature=0, max_tokens=MAX_TOKENS)).json()
    # A browser never renders NUL (a random tiny model can emit one): compare the visible text.
    want = api["choices"][0]["message"]["content"].replace("\x00", "")

    page.goto(url + "/")
    page.wait_for_selector("#question textarea", timeout=60_000)
    page.set_input_files("#image input[type=file]", image)
    page.wait_for_selector("#image img", timeout=30_000)  # the upload has landed
    set_number(page, "temperature", 0)
    set_number(page, "max_tokens", MAX_TOKENS)
    page.fill("#question textarea", QUESTION)
    page.click("#send")
    seen = wait_for_answer(page, want)
    assert all(want.startswith(text) for text in seen)  # it grew by pieces, never rewritten
    assert page.locator("#chatbot [data-testid=user]").all_inner_texts() == [QUESTION]
    page.screenshot(path=str(tmp_path / "web_chat.png"), full_page=True)
    assert os.path.getsize(tmp_path / "web_chat.png") > 10_000

    page.click("#regenerate")  # greedy: the same answer again, still one exchange
    time.sleep(0.5)
    wait_for_answer(page, want)
    assert len(bot_messages(page)) == 1

    page.click("#clear")
    page.wait_for_function("document.querySelectorAll('#chatbot [data-testid=bot]').length == 0",
                           timeout=30_000)

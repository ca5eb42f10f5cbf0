#!/usr/bin/env python3
"""Make the README's explain picture and demo-page screenshots (kept so they can be remade).

    python docs/images/make_pictures.py [--model runs/fashion.npz]     (from the repository root)

Without --model it trains the seed model for one epoch on 30,000 real Fashion-MNIST images
(about a minute) and saves it to /tmp/minicnn-readme-model.npz. Writes into docs/images/:
explain.png (python -m minicnn explain on a test image), serve-drawing.png and serve.png (the
page in headless Chromium after a drawing and after a photo). Needs matplotlib, Pillow,
selenium, chromium and chromedriver.
"""
import argparse
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

import minicnn
from minicnn.datasets import fashion_mnist

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def train(path):
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    minicnn.set_seed(0)
    model = minicnn.Sequential([
        minicnn.Conv2D(32, 3, padding="same", activation="relu", input_shape=(28, 28, 1)),
        minicnn.MaxPooling2D(),
        minicnn.Conv2D(64, 3, padding="same", activation="relu"),
        minicnn.MaxPooling2D(),
        minicnn.Flatten(),
        minicnn.Dense(128, activation="relu"),
        minicnn.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train[:30000, :, :, None] / np.float32(255), y_train[:30000], epochs=1, batch_size=64, verbose=1)
    print("test accuracy", model.evaluate(x_test[:, :, :, None] / np.float32(255), y_test, verbose=0))
    model.save(path)


def product_photo(image, path, size=280):
    """A Fashion-MNIST test image as a product photo: dark item on white, upscaled, JPEG."""
    from PIL import Image

    picture = Image.fromarray(255 - image).resize((size, size), Image.BICUBIC).convert("RGB")
    picture.save(path, quality=92)


def screenshots(model_path, photo):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from minicnn.serve import make_server

    server = make_server(minicnn.load_model(model_path, compile=False), "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=960,600",
                     "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)

    def wait_for_answer(count):
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "return document.body.dataset.state === 'answered' && !inFlight && waiting === null "
            "&& Number(document.body.dataset.answers) > arguments[0];", count))

    try:
        # The exact viewport of the pictures (--window-size includes the window's frame).
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 960, "height": 560, "deviceScaleFactor": 1, "mobile": False})
        driver.get(server.url)
        canvas = driver.find_element(By.ID, "draw")
        for x in (-30, -18, 18, 30):                         # trousers: two wide legs, a waistband
            ActionChains(driver).move_to_element_with_offset(canvas, x, -100).click_and_hold() \
                .move_by_offset(0, 100).move_by_offset(0, 100).release().perform()
        ActionChains(driver).move_to_element_with_offset(canvas, -30, -100).click_and_hold() \
            .move_by_offset(60, 0).move_by_offset(0, 20).move_by_offset(-60, 0).release().perform()
        wait_for_answer(0)
        driver.save_screenshot(str(HERE / "serve-drawing.png"))
        driver.find_element(By.ID, "file").send_keys(str(photo))
        wait_for_answer(1)
        driver.save_screenshot(str(HERE / "serve.png"))
    finally:
        driver.quit()
        server.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a trained Fashion-MNIST model (default: train one briefly)")
    args = parser.parse_args()
    model_path = args.model or "/tmp/minicnn-readme-model.npz"
    if not args.model:
        train(model_path)
    (_, _), (x_test, y_test) = fashion_mnist.load_data()
    with tempfile.TemporaryDirectory() as work:
        boot, sneaker = Path(work) / "ankle_boot.png", Path(work) / "sneaker.jpg"
        from PIL import Image

        Image.fromarray(x_test[0]).save(boot)                      # test image 0: an ankle boot
        product_photo(x_test[np.flatnonzero(y_test == 7)[0]], sneaker)
        subprocess.run([sys.executable, "-c", "import sys; from minicnn.explain_cli import main; "
                        "sys.exit(main(sys.argv[1:]))", "--model", model_path, "--method", "both",
                        "--out", work, str(boot)], check=True, cwd=ROOT)
        (HERE / "explain.png").write_bytes((Path(work) / "ankle_boot_explain.png").read_bytes())
        screenshots(model_path, sneaker)


if __name__ == "__main__":
    main()

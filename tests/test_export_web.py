"""The web export, in a real browser: headless Chromium driven by selenium through chromedriver.

The page's logits equal the numpy engine's float32 decoder within 1e-5 (and the C export's float32 mirror,
logits_like_c, whose operations the page repeats, bit for bit); its samples equal a Python mirror of its sampler
(sampling.generate with random.Random over the mirror's logits); typing and the controls change what it shows;
its Train button's worker follows the numpy engine's float32 training within 1e-4 for 100 steps and runs 1000
steps in seconds; it logs no console errors and fits a phone's width.

Needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver) and selenium: skipped without
them, failed in CI.
"""

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from dataclasses import asdict

from microgpt.config import ModelConfig, TrainConfig, learning_rate, parameter_table
from microgpt.data import Vocabulary, bundled_dataset_path, load_documents, shuffled
from microgpt.engines import EngineState, make_engine
from microgpt.errors import MicrogptError
from c_mirror import logits_like_c
from helpers import missing, quick_loop
from microgpt.export.web import PAGE, export_web, flat_weights
from microgpt.train.checkpoint import load_checkpoint
from microgpt.sampling import generate
from microgpt.train.checkpoint import save_checkpoint

NAMES = ['emma', 'olivia', 'ava', 'isabella', 'sophia', 'mia', 'amelia', 'harper', 'evelyn', 'abigail',
         'emily', 'ella', 'elizabeth', 'camila', 'luna', 'sofia', 'avery', 'mila', 'aria', 'scarlett']
# multi-byte characters (a 4-byte emoji is two UTF-16 units in JavaScript) and text that must not end a <script>
ODD_NAMES = ['zoë', 'josé', 'ñandú', '🙂bob', 'a</script>b', 'o"brien', 'back\\slash', '<!--x']
LOGIT_TOLERANCE = 1e-5
TRAIN_TOLERANCE = 1e-4
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync')
CONFIGS = {
    'default': {},
    'esp32-relu2-tied-bos-first': dict(norm='esp32', mlp_activation='relu2', tie_lm_head=True, bos='first'),
    'no-norm-self-attention': dict(norm='none', attention='self', n_embd=8, n_head=2),
    'two-layers': dict(n_layer=2, n_embd=12, n_head=3, block_size=8),
}


@pytest.fixture(scope='module')
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install selenium)")
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    chromedriver = shutil.which('chromedriver') or ('/usr/bin/chromedriver' if os.path.exists('/usr/bin/chromedriver') else None)
    if not chromium or not chromedriver:
        missing("no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix='microgpt-chromium-')
    for flag in CHROMIUM_FLAGS + (f'--user-data-dir={profile}', '--window-size=1100,2000'):
        options.add_argument(flag)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def checkpoint_of(folder, docs, steps=30, data_path=None, eval_every=0, **model):
    """A float32 numpy engine trained a few steps on docs, saved as folder/model.safetensors; its path."""
    vocab = Vocabulary.from_documents(docs, bos_first=model.get('bos') == 'first')
    cfg = ModelConfig(vocab_size=vocab.size, **model).validate()
    engine = make_engine('numpy', cfg, random.Random(0), 'float32')
    tcfg = TrainConfig(steps=steps, lr=0.02)
    tokens = [vocab.document_tokens(d) for d in docs]
    for step in range(steps):
        engine.train_step([tokens[step % len(tokens)]], learning_rate(tcfg, step), tcfg)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, 'model.safetensors')
    extra = {'eval_every': json.dumps(eval_every)}
    if data_path:
        extra['data_path'] = json.dumps(str(data_path))
    save_checkpoint(path, engine, vocab, tcfg, steps, {}, extra)
    return path


def open_page(browser, page):
    browser.get(Path(page).resolve().as_uri())
    assert browser.execute_script('return typeof window.microgpt') == 'object', console_errors(browser)


def console_errors(browser):
    return [entry for entry in browser.get_log('browser') if entry['level'] == 'SEVERE']


def numpy_logits(ckpt_cfg, weights, token_ids):
    engine = make_engine('numpy', ckpt_cfg, random.Random(0), 'float32')
    engine.load_state(EngineState(weights, None, None, 0))
    decoder = engine.decoder()
    decoder.reset()
    for pos, token in enumerate(token_ids):
        logits = decoder.step(token, pos)
    return np.array(logits, np.float32)


class MirrorDecoder:
    """The page's decoder in Python: logits_like_c repeats its float32 operations (the C program's)."""

    def __init__(self, weights, cfg):
        self.weights, self.cfg, self.ids = weights, cfg, []

    def reset(self):
        self.ids = []

    def step(self, token_id, pos_id):
        self.ids.append(token_id)
        return [float(logit) for logit in logits_like_c(self.weights, self.cfg, self.ids)]


def mirror_samples(ckpt, temperature, top_k, top_p, seed, count):
    rng, decoder = random.Random(seed), MirrorDecoder(ckpt.weights, ckpt.model_cfg)
    return [ckpt.vocab.decode(generate(decoder, ckpt.model_cfg.bos_id, ckpt.model_cfg.block_size, rng,
                                       temperature, top_k, top_p)) for _ in range(count)]


@pytest.fixture(scope='module')
def names_page(tmp_path_factory):
    """A page of a model trained on NAMES, with a metrics.jsonl beside its checkpoint."""
    folder = tmp_path_factory.mktemp('names')
    data = folder / 'names.txt'
    data.write_text('\n'.join(NAMES) + '\n', encoding='utf-8')
    path = checkpoint_of(folder / 'run', NAMES, steps=200, data_path=data)
    records = [{'step': s, 'train_loss': 3.3 - s / 100, 'lr': 0.01} for s in range(1, 201)]
    records[99]['val_loss'] = 2.5
    (folder / 'run' / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records), encoding='utf-8')
    info = export_web(path, str(folder / 'page'))
    return info.page, load_checkpoint(path)


# ---- the model: logits and samples

@pytest.mark.parametrize('name', quick_loop(list(CONFIGS), ['default']))
def test_page_logits_equal_numpy_float32(browser, tmp_path, name):
    model = CONFIGS[name]
    docs = NAMES + ODD_NAMES if name == 'default' else NAMES
    path = checkpoint_of(tmp_path / 'run', docs, **model)
    page = export_web(path, str(tmp_path / 'page')).page
    ckpt = load_checkpoint(path)
    cfg = ckpt.model_cfg
    open_page(browser, page)
    prefixes = ['', 'e', 'mi', 'ava', 'isabellaxxxxxxxxxxx'[:cfg.block_size - 1]]
    if name == 'default':
        prefixes += ['🙂b', 'a</s']
    for prefix in prefixes:
        ids = [cfg.bos_id] + [ckpt.vocab.index[ch] for ch in prefix if ch in ckpt.vocab.index]
        page_logits = np.array(browser.execute_script('return window.microgpt.logits(arguments[0])', ids[1:]), np.float32)
        want = numpy_logits(cfg, ckpt.weights, ids)
        worst = float(np.max(np.abs(page_logits - want)))
        assert worst <= LOGIT_TOLERANCE, (name, prefix, worst)
        mirror = logits_like_c(ckpt.weights, cfg, ids)
        assert np.array_equal(page_logits, mirror), (name, prefix, float(np.max(np.abs(page_logits - mirror))))
    assert console_errors(browser) == []


# temperature alone, top-k, top-p, all three, a seed past 32 bits; the quick loop keeps the last
SAMPLE_SETTINGS = ([pytest.param(*settings, marks=pytest.mark.slow(seconds=1))
                    for settings in [(0.5, 0, 1.0, 42), (1.0, 5, 1.0, 7), (0.8, 0, 0.9, 123), (1.5, 3, 0.8, 0)]]
                   + [(0.7, 0, 1.0, 2**40 + 5)])


@pytest.mark.parametrize('temperature, top_k, top_p, seed', SAMPLE_SETTINGS)
def test_page_samples_equal_python_mirror(browser, names_page, temperature, top_k, top_p, seed):
    page, ckpt = names_page
    open_page(browser, page)
    got = browser.execute_script('return window.microgpt.sample(arguments[0])',
                                 {'temperature': temperature, 'topK': top_k, 'topP': top_p, 'seed': seed, 'count': 8})
    want = mirror_samples(ckpt, temperature, top_k, top_p, seed, 8)
    assert got == want, (got, want)
    assert console_errors(browser) == []


# ---- the interface

def bars(browser, list_id):
    pairs = browser.execute_script(  # in one call: two per bar took a second of the typing test
        'return Array.from(document.querySelectorAll(arguments[0]), li => [li.dataset.token, li.dataset.prob])',
        f'#{list_id} li')
    return [(int(token), float(prob)) for token, prob in pairs]


def test_typing_updates_the_bars_and_unknown_characters_are_named(browser, names_page):
    from selenium.webdriver.common.keys import Keys
    page, ckpt = names_page
    open_page(browser, page)
    box = browser.find_element('id', 'prefix')
    shown = {}
    for text in ('', 'e', 'em', 'emm'):
        if text:
            box.send_keys(text[-1])
        got = bars(browser, 'next-bars')
        ids = [ckpt.model_cfg.bos_id] + ckpt.vocab.encode(text)
        logits = numpy_logits(ckpt.model_cfg, ckpt.weights, ids).astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        assert len(got) == 10, got
        assert [token for token, _ in got] == [int(i) for i in np.argsort(-probs, kind='stable')[:10]], (text, got)
        assert max(abs(p - probs[token]) for token, p in got) < 1e-6, (text, got)
        shown[text] = got
    assert len({tuple(v) for v in shown.values()}) == 4, shown
    assert browser.find_element('id', 'prefix-note').text == ''
    box.send_keys('7')
    note = browser.find_element('id', 'prefix-note').text
    assert '"7" is not in the model\'s vocabulary' in note, note
    assert bars(browser, 'next-bars') == shown['emm']  # the unknown character is left out; the page still works
    box.send_keys(Keys.BACKSPACE)
    assert browser.find_element('id', 'prefix-note').text == ''
    assert len(browser.find_elements('css selector', '#heatmaps canvas')) == ckpt.model_cfg.n_layer * ckpt.model_cfg.n_head
    assert console_errors(browser) == []


def set_field(browser, field_id, value):
    field = browser.find_element('id', field_id)
    field.clear()
    field.send_keys(str(value))
    # the change a user makes by leaving the field: dispatched, then the field left, so no change is pending
    browser.execute_script("arguments[0].dispatchEvent(new Event('change')); arguments[0].blur()", field)


def press(browser, element, key):
    """Focus the element and press a key: what a keyboard user does after tabbing to it."""
    from selenium.webdriver.common.action_chains import ActionChains
    browser.execute_script('arguments[0].focus()', element)
    assert browser.switch_to.active_element == element
    ActionChains(browser).send_keys(key).perform()


def shown_samples(browser):
    return [b.text for b in browser.find_elements('css selector', '#samples button')]


@pytest.mark.slow(seconds=5)
def test_controls_change_the_samples_and_step_through_works_from_the_keyboard(browser, names_page):
    from selenium.webdriver.common.keys import Keys
    page, ckpt = names_page
    open_page(browser, page)
    first = shown_samples(browser)
    assert first == mirror_samples(ckpt, 0.5, 0, 1.0, 42, 12), first
    changes = {'seed': 3, 'temperature': 1.4, 'top-p': 0.5, 'top-k': 1}
    previous = first
    for field, value in changes.items():
        set_field(browser, field, value)
        now = shown_samples(browser)
        assert now != previous, (field, value, now)
        previous = now
    # top-k 1 is greedy: every sample is the same name
    assert len(set(previous)) == 1 and previous == mirror_samples(ckpt, 1.4, 1, 0.5, 3, 12), previous
    set_field(browser, 'top-k', 'x')
    assert 'Top-k' in browser.find_element('id', 'sample-note').text
    set_field(browser, 'top-k', 0)
    # step through the third sample, by keyboard only
    buttons = browser.find_elements('css selector', '#samples button')
    press(browser, buttons[2], Keys.ENTER)
    assert buttons[2].get_attribute('aria-pressed') == 'true'
    name = buttons[2].text
    positions = []
    for _ in range(len(name) + 1):
        chosen = browser.find_element('css selector', '#step-bars li.chosen')
        positions.append(int(chosen.get_attribute('data-token')))
        press(browser, browser.find_element('id', 'step-next'), Keys.ENTER)
    assert ckpt.vocab.decode(positions) == name and positions[-1] == ckpt.model_cfg.bos_id, (name, positions)
    slider = browser.find_element('id', 'step-pos')
    press(browser, slider, Keys.HOME)
    assert slider.get_attribute('value') == '0'
    assert console_errors(browser) == []


def test_every_control_is_labelled_reachable_and_fits_a_phone(browser, names_page):
    page, _ = names_page
    open_page(browser, page)
    unlabelled = browser.execute_script("""
        return [...document.querySelectorAll('input, textarea, button, select')].filter(el =>
            !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
          .map(el => el.outerHTML)""")
    assert unlabelled == [], unlabelled
    unreachable = browser.execute_script("""
        return [...document.querySelectorAll('input, textarea, button')].filter(el => el.tabIndex < 0).map(el => el.id)""")
    assert unreachable == [], unreachable
    browser.set_window_size(390, 900)
    try:
        browser.execute_script('window.dispatchEvent(new Event("resize"))')
        widths = browser.execute_script('return [document.documentElement.scrollWidth, window.innerWidth]')
        assert widths[0] <= widths[1], widths  # nothing wider than the phone: no sideways scrolling
    finally:
        browser.set_window_size(1100, 2000)


@pytest.mark.slow(seconds=1)
def test_the_run_screenshot_is_not_blank_and_no_console_errors(browser, names_page, tmp_path):
    from PIL import Image
    page, ckpt = names_page
    open_page(browser, page)
    info = browser.find_element('id', 'run-info').text
    assert '200 / 200' in info and '2.5000 nats per character (best in metrics.jsonl)' in info, info
    assert browser.find_element('id', 'loss-chart').is_displayed()
    assert 'held-out (orange)' in browser.find_element('id', 'loss-caption').text
    shot = tmp_path / 'page.png'
    browser.save_screenshot(str(shot))
    image = Image.open(shot).convert('RGB')
    colours = len(image.getcolors(maxcolors=1 << 24))
    assert colours > 100, colours
    assert console_errors(browser) == []


# ---- training in the page

def test_train_in_worker_equals_numpy_float32(browser, tmp_path):
    data = bundled_dataset_path()
    docs = load_documents(data)
    path = checkpoint_of(tmp_path / 'run', docs, steps=1, data_path=data)
    page = export_web(path, str(tmp_path / 'page')).page
    open_page(browser, page)
    # microgpt's stream: shuffle, then draw the weights; the page repeats it from the seed
    rng = random.Random(42)
    order = shuffled(docs, rng)
    vocab = Vocabulary.from_documents(docs)
    cfg = ModelConfig(vocab_size=vocab.size)
    engine = make_engine('numpy', cfg, rng, 'float32')
    initial = flat_weights(engine.weights(), cfg)
    page_init = browser.execute_script('return window.microgpt.initTraining(42, arguments[0])', docs)
    assert page_init['order'] == order, "the page's shuffle differs from random.shuffle"
    page_weights = np.array(page_init['weights'], np.float32)
    assert np.array_equal(page_weights, initial), float(np.max(np.abs(page_weights - initial)))

    tcfg = TrainConfig()
    tokens = [vocab.document_tokens(d) for d in order[:tcfg.steps]]
    want = [engine.train_step([tokens[step]], learning_rate(tcfg, step), tcfg) for step in range(tcfg.steps)]
    started = time.perf_counter()
    result = browser.execute_async_script(
        'const done = arguments[arguments.length - 1];'
        'window.microgpt.trainWith(arguments[0], arguments[1], arguments[2]).then(done, e => done(String(e)));',
        initial.tolist(), tokens, tcfg.steps)
    wall = time.perf_counter() - started
    assert isinstance(result, dict), result
    losses = result['losses']
    assert len(losses) == tcfg.steps and all(np.isfinite(losses)), len(losses)
    worst = max(abs(a - b) for a, b in zip(losses[:100], want))
    assert worst <= TRAIN_TOLERANCE, (worst, losses[:5], want[:5])
    assert result['ms'] < 5000 and wall < 15, (result['ms'], wall)
    # float32 rounding differs in order (BLAS sums), so the runs drift apart slowly; they still learn the same
    late = (float(np.mean(losses[-100:])), float(np.mean(want[-100:])))
    assert abs(late[0] - late[1]) < 0.01 and late[1] < 2.5, late
    assert console_errors(browser) == []


@pytest.mark.slow(seconds=1)
@pytest.mark.parametrize('name', [name for name in CONFIGS if name != 'default'])
def test_train_in_worker_equals_numpy_float32_for_every_switch(browser, tmp_path, name):
    """The worker's backward and Adam for the other norms, relu2, a tied lm_head, self-attention, BOS first and
    two layers: 100 steps from the checkpoint's weights, against the numpy engine's float32 steps."""
    path = checkpoint_of(tmp_path / 'run', NAMES, steps=5, **CONFIGS[name])
    ckpt = load_checkpoint(path)
    open_page(browser, export_web(path, str(tmp_path / 'page')).page)
    engine = make_engine('numpy', ckpt.model_cfg, random.Random(0), 'float32')
    engine.load_state(EngineState(ckpt.weights, None, None, 0))
    tcfg = TrainConfig(steps=100)  # the page's run of 100 steps decays the learning rate to 0 at step 100 too
    tokens = [ckpt.vocab.document_tokens(d) for d in shuffled(NAMES, random.Random(1))]
    want = [engine.train_step([tokens[step % len(tokens)]], learning_rate(tcfg, step), tcfg) for step in range(100)]
    result = browser.execute_async_script(
        'const done = arguments[arguments.length - 1];'
        'window.microgpt.trainWith(arguments[0], arguments[1], arguments[2], true).then(done, e => done(String(e)));',
        flat_weights(ckpt.weights, ckpt.model_cfg).tolist(), tokens, 100)
    assert isinstance(result, dict), result
    worst = max(abs(a - b) for a, b in zip(result['losses'], want))
    assert len(result['losses']) == 100 and worst <= TRAIN_TOLERANCE, (name, worst, result['losses'][:3], want[:3])
    assert console_errors(browser) == []


@pytest.mark.slow(seconds=6)
def test_train_button_trains_pasted_names_and_samples(browser, names_page):
    from selenium.webdriver.support.ui import WebDriverWait
    page, ckpt = names_page
    wait = WebDriverWait(browser, 120, poll_frequency=0.05)  # selenium polls every 0.5 s unless told
    open_page(browser, page)
    browser.find_element('id', 'docs-text').send_keys('\n'.join(NAMES[:10]))
    assert browser.find_element('id', 'docs-pasted').is_selected()
    set_field(browser, 'train-steps', 300)
    browser.find_element('id', 'train-button').click()
    wait.until(lambda b: b.find_element('id', 'train-status').text.startswith('trained'))
    names = [li.text for li in browser.find_elements('css selector', '#train-samples li')]
    assert len(names) == 20, names
    browser.find_element('id', 'explore-button').click()
    assert browser.find_element('id', 'title').text == 'the model trained in this page'
    # a long run: the page stays responsive while the worker trains, and Stop ends it
    set_field(browser, 'train-steps', 200000)
    # every text the status takes, recorded in the page as it changes (polling would see only later ones)
    browser.execute_script(
        "window.statusTexts = []; const s = document.getElementById('train-status');"
        "new MutationObserver(() => window.statusTexts.push(s.textContent))"
        ".observe(s, {childList: true, characterData: true, subtree: true});")
    browser.find_element('id', 'train-button').click()
    # before its first report nothing of the finished run is on show (its status, samples and model were)
    status = browser.find_element('id', 'train-status').text
    assert status.startswith('step ') and status.endswith('/ 200000'), status
    assert browser.find_elements('css selector', '#train-samples li') == []
    assert not browser.find_element('id', 'explore-button').is_enabled()
    # the first report comes within REPORT_MS (100 ms), long before the 2000 steps of a hundredth of the run
    def first_report(b):
        return next((t for t in b.execute_script('return window.statusTexts') if not t.startswith('step 0 ')), None)
    first = wait.until(first_report)
    assert first.startswith('step ') and int(first.split()[1]) < 2000, first
    before = bars(browser, 'next-bars')
    browser.find_element('id', 'prefix').send_keys('e')
    assert bars(browser, 'next-bars') != before
    status = browser.find_element('id', 'train-status').text
    assert status.startswith('step ') and '/ 200000' in status, status
    browser.find_element('id', 'stop-button').click()
    assert browser.find_element('id', 'train-status').text.endswith('(stopped)')
    assert browser.find_element('id', 'train-button').is_enabled()
    browser.find_element('id', 'train-button').click()  # again, stopped at once: one "(stopped)", this run's
    browser.find_element('id', 'stop-button').click()
    status = browser.find_element('id', 'train-status').text
    assert status.startswith('step ') and status.count('(stopped)') == 1, status
    # a pasted character outside the vocabulary is named, and nothing trains
    browser.find_element('id', 'docs-text').send_keys('\nq9')
    browser.find_element('id', 'train-button').click()
    assert '"9" not in the model\'s vocabulary' in browser.find_element('id', 'train-note').text
    assert console_errors(browser) == []


# ---- bad input

def test_refuses_a_non_empty_folder_unless_forced(tmp_path):
    path = checkpoint_of(tmp_path / 'run', NAMES, steps=2)
    out = tmp_path / 'page'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    with pytest.raises(MicrogptError, match='not empty.*--force'):
        export_web(path, str(out))
    assert not (out / PAGE).exists()
    info = export_web(path, str(out), force=True)
    assert Path(info.page).stat().st_size > 10000 and (out / 'notes.txt').read_text() == 'mine'
    (tmp_path / 'file').write_text('x')
    with pytest.raises(MicrogptError, match='not a directory'):
        export_web(path, str(tmp_path / 'file'))


def test_checkpoints_that_cannot_be_exported_are_one_line_errors(tmp_path):
    with pytest.raises(MicrogptError, match='no such checkpoint'):
        export_web(str(tmp_path / 'absent.safetensors'), str(tmp_path / 'a'))
    junk = tmp_path / 'junk.safetensors'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(MicrogptError) as error:
        export_web(str(junk), str(tmp_path / 'b'))
    assert '\n' not in str(error.value)
    # float64 weights beyond float32's range: the page computes in float32
    vocab = Vocabulary.from_documents(NAMES)
    engine = make_engine('numpy', ModelConfig(vocab_size=vocab.size), random.Random(0), 'float64')
    weights = engine.weights()
    weights['wpe'][0, 0] = 1e39
    engine.load_state(EngineState(weights, None, None, 0))
    save_checkpoint(str(tmp_path / 'huge.safetensors'), engine, vocab, TrainConfig(), 1, {})
    with pytest.raises(MicrogptError, match='wpe.*infinite in float32'):
        export_web(str(tmp_path / 'huge.safetensors'), str(tmp_path / 'c'))
    assert not (tmp_path / 'c').exists()


def test_damaged_metrics_are_named(tmp_path):
    """...with a way out; and a last line cut off (a killed run's last write) is left out of the curves."""
    path = checkpoint_of(tmp_path / 'run', NAMES, steps=2)
    metrics = tmp_path / 'run' / 'metrics.jsonl'
    metrics.write_text('{"step": 1, "train_loss": 3.1}\n{"step": 2, "train')
    assert export_web(path, str(tmp_path / 'cut')).metrics_path == str(metrics)
    metrics.write_text('{"step": 1, "train_loss": 3.1}\n{"step": 2\n')
    with pytest.raises(MicrogptError, match='line 2 is not a metrics record .*; move it away to export the page '
                                            'without its loss curves$'):
        export_web(path, str(tmp_path / 'page'))
    for step in ('1e400', '2.5', 'true', '-1', str(2**53)):  # 1e400: an OverflowError's traceback
        metrics.write_text(f'{{"step": 1, "train_loss": 3.1}}\n{{"step": {step}, "train_loss": 3.0}}\n')
        with pytest.raises(MicrogptError, match=r'line 2 is not a metrics record \(step .* is not a step number\)'):
            export_web(path, str(tmp_path / 'page'))
    metrics.write_text('{"step": 1, "train_loss": 1' + '0' * 400 + '}\n')  # too large for a float: a traceback
    with pytest.raises(MicrogptError, match=r'line 1 is not a metrics record \(OverflowError: '):
        export_web(path, str(tmp_path / 'page'))
    with pytest.raises(MicrogptError, match='cannot read the run.s metrics'):
        export_web(path, str(tmp_path / 'page2'), metrics_path=str(tmp_path / 'absent.jsonl'))
    (tmp_path / 'run' / 'metrics.jsonl').unlink()
    assert export_web(path, str(tmp_path / 'page3')).metrics_path is None


# ---- what the page carries, and the command line

def page_data(page):
    text = Path(page).read_text(encoding='utf-8')
    start = text.index('<script id="microgpt-data" type="application/json">') + len('<script id="microgpt-data" type="application/json">')
    return json.loads(text[start:text.index('</script>', start)])


def test_the_page_carries_the_parameter_table_and_the_weights_in_its_order(tmp_path):
    import base64
    data_path = tmp_path / 'odd.txt'
    data_path.write_text('\n'.join(NAMES + ODD_NAMES), encoding='utf-8')
    path = checkpoint_of(tmp_path / 'run', NAMES + ODD_NAMES, steps=3, data_path=data_path, n_layer=2, tie_lm_head=True)
    ckpt = load_checkpoint(path)
    data = page_data(export_web(path, str(tmp_path / 'page')).page)
    assert data['spec']['table'] == [asdict(p) for p in parameter_table(ckpt.model_cfg)]
    flat = np.frombuffer(base64.b64decode(data['weights']), '<f4')
    for p in parameter_table(ckpt.model_cfg):
        assert np.array_equal(flat[p.offset:p.offset + p.size].reshape(p.shape), ckpt.weights[p.name]), p.name
    assert data['tokens'][ckpt.model_cfg.bos_id] is None
    assert {ch: i for i, ch in enumerate(data['tokens']) if ch is not None} == ckpt.vocab.index
    assert data['train']['spec']['table'] == [asdict(p) for p in parameter_table(ModelConfig(vocab_size=ckpt.vocab.size))]
    assert data['train']['documents'] == NAMES + ODD_NAMES
    assert '</script>b' not in Path(tmp_path / 'page' / PAGE).read_text(encoding='utf-8')  # '<' is escaped in the JSON


def test_cli_export_web(tmp_path):
    from microgpt.cli import main
    import io
    path = checkpoint_of(tmp_path / 'run', NAMES, steps=2)
    out, err = io.StringIO(), io.StringIO()
    code = main(['export', '--checkpoint', path, '--out', str(tmp_path / 'page'), '--web'], out=out, err=err)
    assert code == 0 and out.getvalue() == f"wrote {tmp_path / 'page' / PAGE}: open it in a browser (no server needed)\n", \
        (code, out.getvalue(), err.getvalue())
    out, err = io.StringIO(), io.StringIO()
    code = main(['export', '--checkpoint', path, '--out', str(tmp_path / 'page'), '--web'], out=out, err=err)
    assert code == 2 and err.getvalue().count('\n') == 1 and 'not empty' in err.getvalue(), (code, err.getvalue())
    assert main(['export', '--checkpoint', path, '--out', str(tmp_path / 'page'), '--web', '--force'],
                out=io.StringIO(), err=io.StringIO()) == 0

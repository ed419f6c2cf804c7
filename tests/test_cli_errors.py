"""Every bad input ends with exit status 2, one line `microgpt: error: ...` on stderr, no traceback,
and nothing on stdout."""

import pytest


def assert_clean_error(code, out, err, *, mentions=()):
    assert code == 2, (code, out, err)
    assert out in ('', b''), f"stdout should be empty on error, got {out!r}"
    if isinstance(err, bytes):
        err = err.decode('utf-8')
    assert 'Traceback' not in err and 'Traceback' not in str(out), err
    lines = err.splitlines()
    assert len(lines) == 1, f"want exactly one stderr line, got {len(lines)}: {err!r}"
    assert err.endswith('\n'), err
    assert lines[0].startswith('microgpt: error: '), lines[0]
    assert len(lines[0]) > len('microgpt: error: ') + 10, lines[0]  # says what is wrong
    for text in mentions:
        assert text in lines[0], (text, lines[0])


@pytest.fixture
def good_data(tmp_path):
    path = tmp_path / 'good.txt'
    path.write_text('anna\nbob\ncyrus\n', encoding='utf-8')
    return str(path)


@pytest.mark.parametrize('raw, mentions', [
    (b'\xff\xfe abc\n', ('UTF-16', 'save it as UTF-8')),
    ('anna\nbob\n'.encode('utf-16'), ('UTF-16', 'save it as UTF-8')),  # was 'not a text file (a NUL byte ...)'
    ('anna\nbob\n'.encode('utf-32'), ('UTF-32 text', 'iconv -f UTF-32 -t UTF-8')),
    (b'\x00\x00\xfe\xff' + 'anna\nbob\n'.encode('utf-32-be'), ('UTF-32 text',)),
    (b'anna\nbob\n\xc3\n', ('UTF-8', 'offset 9')),
    (b'anna\x00bob\n', ('not a text file', 'NUL byte at offset 4')),
    (b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR', ('not a text file', 'NUL byte at offset 8')),
    (b'\n\n   \n\t\r\n', ('no non-blank lines',)),
    (b'', ('no non-blank lines',)),
], ids=['utf16-bom', 'utf16', 'utf32', 'utf32-be', 'truncated-utf8', 'nul-byte', 'png', 'blank-lines-only', 'empty'])
def test_unusable_data_file(tmp_path, run_cli, raw, mentions):
    path = tmp_path / 'data.txt'
    path.write_bytes(raw)
    code, out, err = run_cli('train', '--engine', 'reference', '--data', path, '--steps', '1')
    assert_clean_error(code, out, err, mentions=(str(path),) + mentions)


def test_missing_file(tmp_path, run_cli):
    path = tmp_path / 'no-such-file.txt'
    code, out, err = run_cli('train', '--engine', 'reference', '--data', path, '--steps', '1')
    assert_clean_error(code, out, err, mentions=(str(path), 'no such file'))


def test_directory(tmp_path, run_cli):
    code, out, err = run_cli('train', '--engine', 'reference', '--data', tmp_path, '--steps', '1')
    assert_clean_error(code, out, err, mentions=(str(tmp_path), 'directory'))


@pytest.mark.parametrize('flags, mentions', [
    (['--n-embd', '10', '--n-head', '4'], ('--n-embd 10', '--n-head 4')),
    (['--n-embd', '0'], ('--n-embd',)),
    (['--n-head', '0'], ('--n-head',)),
    (['--n-layer', '0'], ('--n-layer',)),
    (['--block-size', '0'], ('--block-size',)),
    (['--n-embd', '-4', '--n-head', '-2'], ('--n-embd',)),
    (['--steps', '0'], ('--steps',)),
    (['--steps', '-5'], ('--steps',)),
    (['--temperature', '0'], ('--temperature',)),
    (['--temperature', '-0.5'], ('--temperature',)),
    (['--temperature=-1'], ('--temperature',)),
    (['--temperature', 'nan'], ('--temperature',)),
    (['--lr', '-0.1'], ('--lr',)),
    (['--lr', 'nan'], ('--lr',)),
    (['--num-samples', '-1'], ('--num-samples',)),
    (['--bogus-flag'], ('--bogus-flag',)),
    (['--steps', 'ten'], ('--steps', 'ten')),
    (['--steps', '2.5'], ('--steps', '2.5')),
    (['--n-embd', 'x'], ('--n-embd',)),
    (['--engine', 'tpu'], ('--engine', 'tpu')),
    (['--dtype', 'float32'], ('float32',)),
], ids=lambda v: ' '.join(v) if isinstance(v, list) else None)
def test_bad_flag(good_data, run_cli, flags, mentions):
    code, out, err = run_cli('train', '--engine', 'reference', '--data', good_data, *flags)
    assert_clean_error(code, out, err, mentions=mentions)


def test_bad_flag_is_reported_before_the_data_file_is_read(tmp_path, run_cli):
    code, out, err = run_cli('train', '--data', tmp_path / 'missing.txt', '--n-head', '0')
    assert_clean_error(code, out, err, mentions=('--n-head',))


@pytest.mark.parametrize('argv', [[], ['frobnicate'], ['train', 'extra-positional']],
                         ids=['no-command', 'unknown-command', 'extra-positional'])
def test_bad_command_line(run_cli, argv):
    code, out, err = run_cli(*argv)
    assert_clean_error(code, out, err)


def test_end_to_end_missing_file_in_a_fresh_interpreter(run_cli_process):
    code, out, err = run_cli_process('train', '--data', '/nonexistent', timeout=120)
    assert_clean_error(code, out, err, mentions=('/nonexistent',))

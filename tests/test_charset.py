from fedocr.charset import BLANK, Charset, UnknownCounter, default_charset, gb2312_hanzi


def test_default_vocabulary_has_all_gb2312_hanzi_ascii_and_document_symbols():
    charset = default_charset()
    hanzi = gb2312_hanzi()
    assert len(hanzi) == 6763 and len(set(hanzi)) == 6763
    assert hanzi[0] == "啊" and "齄" in hanzi            # first of level 1, last of level 2
    for char in hanzi + list("AZaz09 !~") + list("，。：；（）《》、％¥￥—·“”"):
        assert char in charset, char
    assert len(charset) == len(charset.chars) + 1           # + the blank


def test_blank_is_index_zero_and_never_a_character():
    charset = default_charset()
    ids = charset.encode("金额：¥598.00").ids
    assert BLANK not in ids
    assert charset.decode(ids) == "金额：¥598.00"
    assert charset.decode([BLANK] + ids + [BLANK]) == "金额：¥598.00"


def test_fullwidth_punctuation_keeps_its_own_class_but_fullwidth_letters_fold_to_ascii():
    charset = default_charset()
    assert charset.lookup("，") != charset.lookup(",")
    assert charset.lookup("：") != charset.lookup(":")
    assert charset.normalise("ＡＢＣ１２３") == "ABC123"       # NFKC
    assert charset.normalise("⾦") == "金"                      # Kangxi radical -> hanzi


def test_unknown_characters_are_reported_not_raised():
    charset = default_charset()
    encoded = charset.encode("患者😀김")
    assert charset.decode(encoded.ids) == "患者"
    assert encoded.unknown == ["😀", "김"]
    counter = UnknownCounter()
    counter.add(encoded)
    counter.add(charset.encode("正常"))
    assert counter.lines == 1 and "😀" in counter.summary()
    assert charset.normalise("患者😀", keep_unknown=True) == "患者😀"


def test_version_identifies_the_vocabulary():
    a, b = Charset(list("abc")), Charset(list("abd"))
    assert a.version != b.version
    assert Charset.from_dict(a.to_dict()) == a
    assert default_charset().version == Charset(list(default_charset().chars)).version

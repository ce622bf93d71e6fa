"""Text generators: what each synthetic organisation's documents say.

Every generator is a pure function of a `random.Random`, so a line is reproducible from its
seed. Domain word lists are short on purpose (they set each organisation's flavour); the
breadth of Chinese comes from jieba's frequency-weighted dictionary, which ships with the
installed package (nothing is downloaded).
"""
from __future__ import annotations

import bisect
import os
import random
from collections.abc import Callable
from functools import cache

from fedocr.charset import Charset, default_charset

TextGenerator = Callable[[random.Random], str]

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂华建国玉萍红文辉鹏飞鑫宇浩然子轩梓涵欣怡雨萱博文思远嘉琪佳怡晨曦志强海燕春梅晓东丹丹俊杰"
PROVINCES = ["北京市", "上海市", "广东省", "浙江省", "江苏省", "四川省", "湖北省", "山东省", "河南省", "福建省", "陕西省", "辽宁省", "天津市", "重庆市", "安徽省", "湖南省"]
CITIES = ["广州市", "深圳市", "杭州市", "南京市", "成都市", "武汉市", "济南市", "郑州市", "厦门市", "西安市", "沈阳市", "苏州市", "宁波市", "青岛市", "长沙市", "合肥市"]
DISTRICTS = ["朝阳区", "海淀区", "浦东新区", "天河区", "南山区", "西湖区", "鼓楼区", "武侯区", "江汉区", "历下区", "金水区", "思明区", "雁塔区", "和平区"]
ROADS = ["人民路", "解放路", "中山路", "建设大道", "长江路", "文化路", "科技园路", "滨江大道", "学院路", "新华街", "光明路", "胜利街"]

DRUGS = ["阿莫西林胶囊", "布洛芬缓释胶囊", "头孢克肟分散片", "盐酸二甲双胍片", "阿司匹林肠溶片", "氯雷他定片", "奥美拉唑肠溶胶囊",
         "硝苯地平控释片", "复方甘草片", "维生素C片", "蒙脱石散", "左氧氟沙星片", "氨溴索口服液", "甲硝唑片", "辛伐他汀片",
         "葡萄糖注射液", "氯化钠注射液", "地塞米松磷酸钠注射液", "青霉素钠", "胰岛素注射液", "板蓝根颗粒", "连花清瘟胶囊",
         "Amoxicillin", "Ibuprofen", "Metformin", "Aspirin", "Omeprazole", "Insulin"]
DEPARTMENTS = ["内科", "外科", "儿科", "妇产科", "眼科", "耳鼻喉科", "皮肤科", "口腔科", "急诊科", "心血管内科", "神经内科", "呼吸科",
               "消化内科", "骨科", "泌尿外科", "肿瘤科", "中医科", "康复科", "检验科", "放射科", "ICU"]
MEDICAL_WORDS = ["姓名", "性别", "年龄", "门诊号", "住院号", "床号", "科室", "诊断", "主诉", "现病史", "既往史", "过敏史", "处方",
                 "医嘱", "用法用量", "体温", "血压", "脉搏", "心率", "血常规", "尿常规", "复查", "签名", "日期", "无", "有",
                 "上呼吸道感染", "高血压", "糖尿病", "急性胃肠炎", "支气管炎", "冠心病", "骨折", "过敏性鼻炎"]
DOSAGE_UNITS = ["mg", "g", "ml", "片", "粒", "袋", "支", "IU"]
FREQUENCIES = ["每日一次", "每日两次", "每日三次", "每8小时一次", "睡前服用", "饭后服用", "必要时", "qd", "bid", "tid", "prn"]

BANK_TERMS = ["金额", "账号", "户名", "开户行", "交易日期", "摘要", "余额", "借方", "贷方", "利率", "期限", "本金", "利息", "合同编号",
              "借款人", "贷款人", "担保人", "还款方式", "等额本息", "转账", "汇款", "手续费", "币种", "人民币", "大写", "小写", "签章",
              "甲方", "乙方", "违约责任", "本合同自双方签字盖章之日起生效", "银行承兑汇票", "对公账户", "活期储蓄"]
BANKS = ["中国工商银行", "中国建设银行", "中国农业银行", "中国银行", "交通银行", "招商银行", "浦发银行", "中信银行", "兴业银行", "民生银行"]
CN_DIGITS = "零壹贰叁肆伍陆柒捌玖"

SUBJECTS = ["语文", "数学", "英语", "物理", "化学", "生物", "历史", "地理", "政治", "音乐", "美术", "体育", "信息技术"]
SCHOOL_WORDS = ["班级", "学号", "姓名", "成绩", "总分", "平均分", "排名", "评语", "作业", "期中考试", "期末考试", "单元测验", "优秀",
                "良好", "及格", "不及格", "家长签字", "老师评语", "认真完成", "书写工整", "继续努力", "进步很大", "请订正",
                "阅读理解", "作文", "选择题", "填空题", "解答题", "第一题", "答", "解"]
ENGLISH_WORDS = ["the", "and", "homework", "reading", "answer", "question", "total", "score", "name", "class", "date", "invoice",
                 "amount", "account", "contract", "patient", "doctor", "dose", "tablet", "daily", "order", "express", "tracking",
                 "address", "phone", "number", "payment", "balance", "signature", "page", "report", "check", "No.", "Tel:", "ID:"]

LOGISTICS_WORDS = ["运单号", "寄件人", "收件人", "电话", "地址", "重量", "件数", "运费", "到付", "寄付", "签收", "派送中", "已揽收",
                   "中转", "始发地", "目的地", "保价", "备注", "易碎品", "快递员", "网点", "日期", "物品", "文件", "包裹"]
COURIERS = ["顺丰速运", "中通快递", "圆通速递", "韵达快递", "申通快递", "京东物流", "邮政EMS", "德邦快递", "SF", "ZTO", "YTO"]


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def person_name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2))))


def date(rng: random.Random) -> str:
    y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{y}年{m}月{d}日", f"{y}-{m:02d}-{d:02d}", f"{y}/{m:02d}/{d:02d}", f"{y}.{m}.{d}"])


def phone(rng: random.Random) -> str:
    mobile = "1" + rng.choice("3456789") + _digits(rng, 9)
    return rng.choice([mobile, f"{mobile[:3]}-{mobile[3:7]}-{mobile[7:]}", f"0{_digits(rng, 2)}-{_digits(rng, 8)}"])


def address(rng: random.Random) -> str:
    return (rng.choice(PROVINCES) + rng.choice(CITIES) + rng.choice(DISTRICTS) + rng.choice(ROADS)
            + f"{rng.randint(1, 999)}号" + rng.choice(["", f"{rng.randint(1, 30)}栋{rng.randint(101, 2808)}室", "A座"]))


def amount(rng: random.Random) -> str:
    value = rng.choice([rng.uniform(0, 100), rng.uniform(0, 10000), rng.uniform(0, 5e6)])
    text = f"{value:,.2f}" if rng.random() < 0.5 else f"{value:.2f}"
    return rng.choice(["¥", "￥", "RMB ", "", "$"]) + text


def chinese_amount(rng: random.Random) -> str:
    return "".join(rng.choice(CN_DIGITS) + rng.choice("拾佰仟万") for _ in range(rng.randint(1, 4))) + rng.choice(["元整", "元", "圆整"])


@cache
def _jieba_vocabulary() -> tuple[list[str], list[float]]:
    """jieba's dictionary as (words, cumulative weights), keeping words our charset can encode."""
    import jieba  # imported lazily: only corpus generation needs it

    charset = default_charset()
    words, cumulative, total = [], [], 0.0
    with open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), encoding="utf-8") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) < 2 or not all(c in charset for c in parts[0]):
                continue
            # sqrt flattens Zipf's law: common words stay common, rare characters still appear
            total += int(parts[1]) ** 0.5
            words.append(parts[0])
            cumulative.append(total)
    return words, cumulative


def chinese_words(rng: random.Random, n: int) -> str:
    words, cumulative = _jieba_vocabulary()
    picks = (words[bisect.bisect_left(cumulative, rng.random() * cumulative[-1])] for _ in range(n))
    return "".join(picks)


def rare_characters(rng: random.Random, n: int, charset: Charset | None = None) -> str:
    """Uniform draws from the vocabulary's hanzi, so rare characters are seen often enough."""
    hanzi = [c for c in (charset or default_charset()).chars if "\u4e00" <= c <= "\u9fff"]
    return "".join(rng.choice(hanzi) for _ in range(n))


def hospital_line(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:
        dose = rng.choice([f"{rng.choice([0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 500])}{rng.choice(DOSAGE_UNITS)}",
                           f"{rng.randint(1, 3)}{rng.choice(DOSAGE_UNITS)}"])
        return f"{rng.choice(DRUGS)} {dose} {rng.choice(FREQUENCIES)}"
    if kind < 0.55:
        field = rng.choice(["姓名：" + person_name(rng), f"年龄：{rng.randint(1, 95)}岁", "科室：" + rng.choice(DEPARTMENTS),
                            f"门诊号：{_digits(rng, 8)}", f"体温：{rng.uniform(35.5, 40.5):.1f}℃",
                            f"血压：{rng.randint(90, 180)}/{rng.randint(50, 110)}mmHg", "日期：" + date(rng)])
        return field + rng.choice(["", "  " + rng.choice(MEDICAL_WORDS)])
    if kind < 0.75:
        return "诊断：" + "，".join(rng.sample(MEDICAL_WORDS[26:], rng.randint(1, 2)))
    return "".join(rng.choice(MEDICAL_WORDS) for _ in range(rng.randint(1, 3))) + chinese_words(rng, rng.randint(0, 3))


def bank_line(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        return rng.choice(["金额：", "余额：", "本金：", "手续费："]) + amount(rng)
    if kind < 0.45:
        return rng.choice(["账号：", "卡号：", "对公账户："]) + " ".join(_digits(rng, 4) for _ in range(rng.randint(4, 5)))
    if kind < 0.55:
        return "大写：人民币" + chinese_amount(rng)
    if kind < 0.7:
        return rng.choice(["交易日期：", "签订日期：", "到期日："]) + date(rng)
    if kind < 0.8:
        return f"合同编号：{rng.choice(['HT', 'JK', 'DK'])}{rng.randint(2015, 2030)}-{_digits(rng, 6)}"
    if kind < 0.9:
        return rng.choice(BANKS) + rng.choice(CITIES)[:-1] + rng.choice(["分行", "支行", "营业部"])
    return rng.choice(BANK_TERMS) + rng.choice(["：", "，", ""]) + chinese_words(rng, rng.randint(1, 4))


def school_line(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        return f"{person_name(rng)} {rng.choice(SUBJECTS)} {rng.randint(35, 100)}分"
    if kind < 0.45:
        return f"{rng.randint(1, 12)}年级{rng.randint(1, 15)}班 学号：{_digits(rng, rng.choice((6, 8)))}"
    if kind < 0.6:
        return rng.choice(SCHOOL_WORDS) + "：" + chinese_words(rng, rng.randint(2, 6)) + rng.choice(["。", "！", "", "？"])
    if kind < 0.75:
        a, b = rng.randint(1, 999), rng.randint(1, 99)
        op = rng.choice(["+", "-", "×", "÷"])
        return f"{rng.randint(1, 20)}. {a} {op} {b} = " + rng.choice(["", "?", str(a + b)])
    if kind < 0.85:
        return " ".join(rng.choice(ENGLISH_WORDS) for _ in range(rng.randint(2, 6))).capitalize() + rng.choice([".", "", "?"])
    return chinese_words(rng, rng.randint(3, 9)) + rng.choice(["，", "。", ""])


def logistics_line(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.25:
        return f"运单号：{rng.choice(['SF', 'YT', 'ZT', 'JD', 'EMS', ''])}{_digits(rng, rng.choice((10, 12, 13, 15)))}"
    if kind < 0.45:
        return rng.choice(["收件人：", "寄件人："]) + person_name(rng) + " " + phone(rng)
    if kind < 0.7:
        return rng.choice(["地址：", "收件地址：", ""]) + address(rng)
    if kind < 0.8:
        return f"重量：{rng.uniform(0.1, 50):.1f}kg 件数：{rng.randint(1, 20)} 运费：{amount(rng)}"
    if kind < 0.9:
        return rng.choice(COURIERS) + " " + rng.choice(LOGISTICS_WORDS) + " " + date(rng)
    return rng.choice(["电话：", "Tel: ", "联系电话："]) + phone(rng)


def general_line(rng: random.Random) -> str:
    """Everyday mixed text: Chinese phrases, English, numbers and punctuation, 1 to 40+ characters."""
    kind = rng.random()
    if kind < 0.45:
        text = chinese_words(rng, rng.randint(1, 12))
        if rng.random() < 0.5:
            text += rng.choice("，。、；：？！")
            text += chinese_words(rng, rng.randint(1, 6))
        return text
    if kind < 0.55:
        return rare_characters(rng, rng.randint(1, 14))
    if kind < 0.7:
        return " ".join(rng.choice(ENGLISH_WORDS + [_digits(rng, rng.randint(1, 6))]) for _ in range(rng.randint(1, 7)))
    if kind < 0.8:
        return chinese_words(rng, rng.randint(1, 4)) + rng.choice(["", " "]) + rng.choice(ENGLISH_WORDS) + _digits(rng, rng.randint(0, 4))
    if kind < 0.9:
        left, right = rng.choice(["（）", "《》", "“”", "【】", "()"])
        return left + chinese_words(rng, rng.randint(1, 4)) + right
    return rng.choice([date, phone, amount, address, chinese_amount, person_name])(rng)


DOMAIN_TEXT: dict[str, TextGenerator] = {
    "hospital": hospital_line, "bank": bank_line, "school": school_line, "logistics": logistics_line,
}


def public_line(rng: random.Random) -> str:
    """The public mix the server validates on: every domain plus general text."""
    if rng.random() < 0.3:
        return general_line(rng)
    return DOMAIN_TEXT[rng.choice(sorted(DOMAIN_TEXT))](rng)


def pretrain_line(rng: random.Random) -> str:
    """The base model's corpus: mostly everyday text (every character), plus the domains."""
    return general_line(rng) if rng.random() < 0.6 else public_line(rng)


def digits_and_dozen_hanzi(rng: random.Random) -> str:
    """A small task for learning tests: digits and twelve common hanzi, 3 to 10 characters."""
    alphabet = "0123456789" + "中国人民银行金额日期医院学校"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 10)))

"""Prompts a 10 M story model cannot serve and was never taught about: gibberish, other
languages, code and arithmetic.

The chat set's evaluation (`tilelli.chat.dataset`) and the uncertainty probe
(`tilelli.probe.sets`) both draw on these; no chat model is trained on any of them, so they
measure what the model does with text nobody prepared it for. The language lines are ours.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence

LANGUAGE_LINES = (

    "Bonjour, comment vas-tu aujourd'hui ?", "Quelle heure est-il ?", "Je voudrais un café, s'il vous plaît.",
    "Où se trouve la gare ?", "Pourquoi le ciel est-il bleu ?", "Il fait très froid ce matin.",
    "¿Dónde está la biblioteca?", "Me gustaría aprender a cocinar.", "¿Cuántos años tienes?",
    "El perro corre en el parque.", "¿Qué tiempo hace hoy?", "Necesito ayuda con mi tarea.",
    "Wie spät ist es?", "Ich habe heute keine Zeit.", "Kannst du mir bitte helfen?",
    "Das Wetter ist heute schön.", "Wo ist der Bahnhof?", "Ich lerne seit zwei Jahren Deutsch.",
    "Come ti chiami?", "Vorrei prenotare un tavolo per due.", "Dove si trova il museo?",
    "Oggi è una bella giornata.", "Qual è il tuo colore preferito?", "Onde fica a praia mais próxima?",
    "Eu gosto muito de ler livros.", "Você pode falar mais devagar?", "Hoe gaat het met je?",
    "Ik woon in een klein dorp.", "Waar is de supermarkt?", "Nasılsın, her şey yolunda mı?",
    "Bugün hava çok güzel.", "Jak się masz?", "Gdzie jest najbliższy sklep?", "Hur mycket kostar det?",
    "Jag tycker om att simma.", "Hvad hedder du?", "Mitä kuuluu?", "Kde je nádraží?",
    "Привет, как дела?", "Где находится метро?", "Сколько это стоит?", "今日はいい天気ですね。",
    "駅はどこですか？", "你好，你叫什么名字？", "今天天气怎么样？", "안녕하세요, 만나서 반갑습니다.",
    "مرحبا، كيف حالك؟", "שלום, מה שלומך?", "Γεια σου, τι κάνεις;", "नमस्ते, आप कैसे हैं?",

    "Le train part à huit heures.", "Nous allons au marché samedi matin.", "Mi hermana vive cerca del río.",
    "La sopa está demasiado caliente.", "Der Zug hat zehn Minuten Verspätung.", "Meine Mutter kocht heute Suppe.",
    "Il treno parte alle nove e mezza.", "Mi piace molto camminare in montagna.", "A reunião começa às dez horas.",
    "O gato dorme no sofá da sala.", "De fiets staat voor het huis.", "Vi ses i morgon bitti.",
    "Jeg liker å gå tur i skogen.", "Kan du hjælpe mig med dette?", "Kissa nukkuu sohvalla.",
    "Dziękuję bardzo za pomoc.", "Dnes je krásný den na procházku.", "Kitabı masanın üstüne koydum.",
    "Hol van a legközelebbi posta?", "Unde este cea mai apropiată farmacie?", "Saya ingin memesan secangkir teh.",
    "Hôm nay trời đẹp quá.", "Habari za asubuhi, rafiki yangu.", "Я люблю читать книги по вечерам.",
    "Де знаходиться найближча аптека?", "Το τρένο φεύγει στις οκτώ.", "私は毎朝コーヒーを飲みます。",
    "我明天要去图书馆看书。", "오늘 저녁에 뭐 먹을까요?", "أين أقرب محطة قطار؟", "אני אוהב לקרוא ספרים בערב.",
    "मुझे सुबह चाय पीना पसंद है।", "วันนี้อากาศดีมาก", "Hvar er næsta bensínstöð?", "Täna on väga külm ilm.",
    "Je suis fatigué après le travail.", "Le chien aboie toute la nuit.", "Combien coûte ce livre ?",
    "¿Puedes cerrar la ventana, por favor?", "Mañana vamos a la playa.", "Los niños juegan en el jardín.",
    "Ich möchte ein Glas Wasser, bitte.", "Wann fährt der nächste Bus?", "Mein Bruder spielt gern Fußball.",
    "Dove posso comprare un biglietto?", "Ho perso le chiavi di casa.", "Quanto custa este casaco?",
    "Ik heb honger en dorst.", "Vad heter du?", "Hvor er toilettet?", "Czy mówisz po angielsku?",
    "Сегодня идёт сильный дождь.", "Как тебя зовут?", "今何時ですか？", "猫が窓のそばで寝ています。",
    "请问洗手间在哪里？", "我喜欢吃苹果和香蕉。", "이 책은 정말 재미있어요.", "지하철역이 어디에 있어요?",
    "كم الساعة الآن؟", "أنا أحب القهوة في الصباح.", "מה השעה עכשיו?", "Πού είναι το μουσείο;",
    "आज मौसम बहुत अच्छा है।", "ฉันชอบกินข้าวผัด", "Tôi muốn uống một ly cà phê.", "Selamat pagi, apa kabar?",
)
_CODE_TASKS = ("reverses a string", "checks if a number is prime", "sorts a list of numbers",
               "counts the vowels in a word", "returns the largest item of a list", "computes the factorial of n",
               "reads a file line by line", "removes duplicates from a list", "converts Celsius to Fahrenheit",
               "merges two dictionaries", "parses a date", "finds the median of a list")
_CODE_FORMS = ("Write a Python function that {t}.", "write code that {t}",
               "Can you write a JavaScript function that {t}?",
               "Give me a C program that {t}.", "How do I write a function that {t} in Rust?")
_SNIPPETS = ("What does this code do?\n\ndef f(x):\n    return x * {k}", "Fix this code: for i in range({k}) print(i)",
             "What is the output of print(sum(range({k})))?", "SELECT * FROM users WHERE id = {k};",
             "int main() {{ int a = {k}; printf(\"%d\", a); }}", "console.log([1,2,{k}].map(x => x * 2))",
             "Why does `ls -la | grep {k}` print nothing?", "x = [i**2 for i in range({k})]\nprint(x)")
_ARITHMETIC = ("What is {a} {op} {b}?", "{a} {op} {b} =", "Compute {a} {op} {b}.", "what's {a}{op}{b}",
               "How much is {a} {op} {b}?", "Solve: {a} {op} {b}")


def gibberish(rng: random.Random, stories: Sequence[str], i: int) -> str:
    """Random letter groups (odd i) or a story's first 60 characters shuffled (even i)."""
    if i % 2:
        return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
                        for _ in range(rng.randint(3, 9)))
    chars = list(rng.choice(stories)[:60])
    rng.shuffle(chars)
    return "".join(chars).strip() or "xq zvk"


def code(rng: random.Random, i: int) -> str:
    if i % 2:
        return rng.choice(_CODE_FORMS).format(t=rng.choice(_CODE_TASKS))
    return rng.choice(_SNIPPETS).format(k=rng.randint(2, 9))


def arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    return rng.choice(_ARITHMETIC).format(a=a, op=rng.choice("+-*"), b=b)


def unservable_prompts(rng: random.Random, n_each: int, stories: Sequence[str],
                       languages: Sequence[str] = LANGUAGE_LINES) -> list[dict[str, str]]:
    """`n_each` prompts of every kind as {"kind", "prompt"}; language lines are taken without
    repeats while they last."""
    out = [{"kind": "gibberish", "prompt": gibberish(rng, stories, i)} for i in range(n_each)]
    lines = list(languages)
    rng.shuffle(lines)
    out += [{"kind": "language", "prompt": lines[i % len(lines)]} for i in range(n_each)]
    out += [{"kind": "code", "prompt": code(rng, i)} for i in range(n_each)]
    out += [{"kind": "arithmetic", "prompt": arithmetic(rng)} for _ in range(n_each)]
    return out

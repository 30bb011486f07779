"""Prompts a 10 M story model cannot serve: gibberish, other languages, code and arithmetic.

Every generator has a `train` and an `eval` side that share no template, task or line:
the chat model is taught to refuse the train side (`tilelli.chat.dataset`), and the held-out
evaluation and the uncertainty probe (`tilelli.probe.sets`) use only the eval side, so what they
measure is refusal of text in forms the model never saw. Gibberish is random either way (the
train side shuffles TinyStories *train* stories, the eval side *valid* ones). All language lines
are ours: LANGUAGE_LINES (eval) and TRAIN_LANGUAGE_LINES are disjoint.
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
TRAIN_LANGUAGE_LINES = (
    "Le chat dort sur le lit.", "J'aime beaucoup les pommes rouges.", "Nous partons en vacances demain.",
    "Elle chante une chanson douce.", "El sol brilla sobre el mar.", "Mi abuela hace pan los domingos.",
    "¿Te gusta el chocolate caliente?", "Tengo dos hermanos y una hermana.", "Der Hund spielt mit dem Ball.",
    "Wir essen heute Abend Pizza.", "Ist das dein neues Fahrrad?", "Ich gehe morgen ins Kino.",
    "Il gatto beve il latte.", "Domani andiamo al mare.", "Ti piace la pizza con i funghi?",
    "A menina brinca no parque.", "Vamos ao cinema hoje à noite?", "Het regent de hele dag.",
    "Mijn zus heeft een nieuwe hond.", "Jag har en röd cykel.", "Vi spiser middag klokken seks.",
    "Pada hari Minggu kami pergi ke pasar.", "Bugün okula yürüyerek gittim.", "Mam dwa koty i psa.",
    "Моя мама работает в больнице.", "Завтра будет тёплый день.", "Я хочу пить чай с мёдом.",
    "Это мой лучший друг.", "私の犬はとても元気です。", "明日は雨が降るでしょう。", "このりんごは甘いです。",
    "我每天早上跑步。", "这本书很有意思。", "我们一起去公园吧。", "저는 학생입니다.", "내일 친구를 만나요.",
    "أحب أن أقرأ القصص.", "الجو حار اليوم.", "הילד משחק בכדור.", "Η θάλασσα είναι γαλάζια σήμερα.",
    "मेरा नाम राम है।", "हम कल बाज़ार जाएंगे।", "ฉันไปโรงเรียนทุกวัน", "Con mèo đang ngủ trên ghế.",
    "Tunaenda sokoni kesho asubuhi.", "Minä rakastan kahvia.", "Kutya ugat a kertben.",
    "Dnes večer budeme vařit.", "Мој брат воли фудбал.", "Sunt foarte obosit astăzi.",
    "Barnið leikur sér úti.", "Ma armastan talve.", "Aš mėgstu skaityti knygas.", "Es dzīvoju Rīgā.",
    "Eu amo dias de sol.", "Nós moramos perto da escola.", "Ik drink elke ochtend thee.",
    "Katten ligger i solen.", "Kedi bahçede uyuyor.", "Zítra pojedeme na výlet.",
)
CODE_TASKS = {"train": ("adds two numbers", "prints hello world", "finds the smallest item of a list",
                        "checks if a word is a palindrome", "counts words in a sentence", "squares every number",
                        "joins two strings", "returns the length of a list", "flattens a nested list",
                        "reads a CSV file"),
              "eval": ("reverses a string", "checks if a number is prime", "sorts a list of numbers",
                       "counts the vowels in a word", "returns the largest item of a list",
                       "computes the factorial of n", "reads a file line by line", "removes duplicates from a list",
                       "converts Celsius to Fahrenheit", "merges two dictionaries", "parses a date",
                       "finds the median of a list")}
CODE_FORMS = {"train": ("Write a function that {t}.", "Write a Java method that {t}.", "Python code that {t}",
                        "Show me a Go program that {t}.", "Can you code a function that {t}?"),
              "eval": ("Write a Python function that {t}.", "write code that {t}",
                       "Can you write a JavaScript function that {t}?", "Give me a C program that {t}.",
                       "How do I write a function that {t} in Rust?")}
SNIPPETS = {"train": ("def g(n):\n    return n + {k}", "Explain: while x < {k}: x += 1",
                      "print(len([{k}, 2, 3]))", "UPDATE items SET count = {k};", "for (int i = 0; i < {k}; i++) {{}}",
                      "let v = vec![{k}; 3];", "echo $(( {k} * 2 ))", "import os\nos.listdir('{k}')"),
            "eval": ("What does this code do?\n\ndef f(x):\n    return x * {k}",
                     "Fix this code: for i in range({k}) print(i)", "What is the output of print(sum(range({k})))?",
                     "SELECT * FROM users WHERE id = {k};", "int main() {{ int a = {k}; printf(\"%d\", a); }}",
                     "console.log([1,2,{k}].map(x => x * 2))", "Why does `ls -la | grep {k}` print nothing?",
                     "x = [i**2 for i in range({k})]\nprint(x)")}
ARITHMETIC = {"train": ("{a} {op} {b}", "{a}{op}{b}=?", "Calculate {a} {op} {b}", "What's {a} {op} {b}?",
                        "Tell me {a} {op} {b}.", "Can you add up {a} {op} {b}?"),
              "eval": ("What is {a} {op} {b}?", "{a} {op} {b} =", "Compute {a} {op} {b}.", "quick math: {a}{op}{b}",
                       "How much is {a} {op} {b}?", "Solve: {a} {op} {b}")}
LANGUAGES = {"train": TRAIN_LANGUAGE_LINES, "eval": LANGUAGE_LINES}
KINDS = ("gibberish", "language", "code", "arithmetic")


def gibberish(rng: random.Random, stories: Sequence[str], i: int) -> str:
    """Random letter groups (odd i) or a story's first 60 characters shuffled (even i)."""
    if i % 2:
        return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
                        for _ in range(rng.randint(3, 9)))
    chars = list(rng.choice(stories)[:60])
    rng.shuffle(chars)
    return "".join(chars).strip() or "xq zvk"


def code(rng: random.Random, i: int, split: str = "eval") -> str:
    if i % 2:
        return rng.choice(CODE_FORMS[split]).format(t=rng.choice(CODE_TASKS[split]))
    return rng.choice(SNIPPETS[split]).format(k=rng.randint(2, 9))


def arithmetic(rng: random.Random, split: str = "eval") -> str:
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    return rng.choice(ARITHMETIC[split]).format(a=a, op=rng.choice("+-*"), b=b)


def unservable_prompts(rng: random.Random, n_each: int, stories: Sequence[str], split: str = "eval"
                       ) -> list[dict[str, str]]:
    """`n_each` prompts of every kind from `split`'s generators, as {"kind", "prompt"}; language
    lines are taken without repeats while they last."""
    out = [{"kind": "gibberish", "prompt": gibberish(rng, stories, i)} for i in range(n_each)]
    lines = list(LANGUAGES[split])
    rng.shuffle(lines)
    out += [{"kind": "language", "prompt": lines[i % len(lines)]} for i in range(n_each)]
    out += [{"kind": "code", "prompt": code(rng, i, split)} for i in range(n_each)]
    out += [{"kind": "arithmetic", "prompt": arithmetic(rng, split)} for _ in range(n_each)]
    return out

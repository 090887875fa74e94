"""A small fixed parallel corpus (English, French, Spanish) for training demo tokenizers.

The demo models have random weights, so the corpus only shapes the tokenizers' vocabularies.
It lives in code, not in a download, so a tokenizer trained from it is the same on every
machine. ``sentences`` widens it with seeded recombinations so BPE has enough distinct
words to learn a few thousand merges.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

Language = str

PARALLEL: tuple[tuple[str, str, str], ...] = (
    (
        "The cat sleeps on the warm chair.",
        "Le chat dort sur la chaise chaude.",
        "El gato duerme en la silla caliente.",
    ),
    ("Where is the train station?", "Où est la gare ?", "¿Dónde está la estación de tren?"),
    (
        "I would like a cup of coffee, please.",
        "Je voudrais une tasse de café, s'il vous plaît.",
        "Quisiera una taza de café, por favor.",
    ),
    ("The weather is beautiful today.", "Il fait beau aujourd'hui.", "Hoy hace buen tiempo."),
    (
        "Our model answers questions about the database.",
        "Notre modèle répond aux questions sur la base de données.",
        "Nuestro modelo responde preguntas sobre la base de datos.",
    ),
    (
        "The server streams tokens as soon as they are ready.",
        "Le serveur envoie les jetons dès qu'ils sont prêts.",
        "El servidor transmite los tokens en cuanto están listos.",
    ),
    (
        "Batching requests makes the hardware work harder.",
        "Regrouper les requêtes fait travailler le matériel davantage.",
        "Agrupar las solicitudes hace trabajar más al hardware.",
    ),
    (
        "Every service scales on its own.",
        "Chaque service évolue de manière indépendante.",
        "Cada servicio escala por su cuenta.",
    ),
    (
        "Please translate this sentence into French.",
        "Veuillez traduire cette phrase en français.",
        "Por favor, traduzca esta frase al francés.",
    ),
    (
        "The library opens at nine in the morning.",
        "La bibliothèque ouvre à neuf heures du matin.",
        "La biblioteca abre a las nueve de la mañana.",
    ),
    (
        "My brother lives in a small village near the sea.",
        "Mon frère habite dans un petit village près de la mer.",
        "Mi hermano vive en un pequeño pueblo cerca del mar.",
    ),
    (
        "We need more memory for the larger model.",
        "Nous avons besoin de plus de mémoire pour le grand modèle.",
        "Necesitamos más memoria para el modelo más grande.",
    ),
    (
        "The children are playing in the garden.",
        "Les enfants jouent dans le jardin.",
        "Los niños juegan en el jardín.",
    ),
    ("How much does this book cost?", "Combien coûte ce livre ?", "¿Cuánto cuesta este libro?"),
    (
        "She reads the newspaper every evening.",
        "Elle lit le journal tous les soirs.",
        "Ella lee el periódico todas las noches.",
    ),
    (
        "The queue is full, try again later.",
        "La file est pleine, réessayez plus tard.",
        "La cola está llena, inténtelo más tarde.",
    ),
    (
        "A customer ordered three products yesterday.",
        "Un client a commandé trois produits hier.",
        "Un cliente pidió tres productos ayer.",
    ),
    (
        "The price of the red bicycle is too high.",
        "Le prix du vélo rouge est trop élevé.",
        "El precio de la bicicleta roja es demasiado alto.",
    ),
    (
        "Open the window, it is hot in here.",
        "Ouvre la fenêtre, il fait chaud ici.",
        "Abre la ventana, hace calor aquí.",
    ),
    (
        "The gateway speaks the same protocol as the cloud.",
        "La passerelle parle le même protocole que le nuage.",
        "La pasarela habla el mismo protocolo que la nube.",
    ),
    (
        "We measured the latency of every request.",
        "Nous avons mesuré la latence de chaque requête.",
        "Medimos la latencia de cada solicitud.",
    ),
    (
        "The river flows slowly through the old town.",
        "La rivière coule lentement à travers la vieille ville.",
        "El río fluye lentamente por el casco antiguo.",
    ),
    (
        "Can you help me find my keys?",
        "Peux-tu m'aider à trouver mes clés ?",
        "¿Puedes ayudarme a encontrar mis llaves?",
    ),
    (
        "The meeting starts after lunch.",
        "La réunion commence après le déjeuner.",
        "La reunión empieza después del almuerzo.",
    ),
    (
        "Fresh bread is sold in the bakery on the corner.",
        "Le pain frais est vendu à la boulangerie du coin.",
        "El pan fresco se vende en la panadería de la esquina.",
    ),
    (
        "Her favourite colour is green.",
        "Sa couleur préférée est le vert.",
        "Su color favorito es el verde.",
    ),
    (
        "The doctor will see you tomorrow.",
        "Le médecin vous recevra demain.",
        "El médico lo verá mañana.",
    ),
    (
        "Write the answer in one short sentence.",
        "Écris la réponse en une phrase courte.",
        "Escribe la respuesta en una frase corta.",
    ),
    (
        "The embedding of a sentence is a vector of numbers.",
        "Le plongement d'une phrase est un vecteur de nombres.",
        "La incrustación de una frase es un vector de números.",
    ),
    (
        "Similar sentences have similar vectors.",
        "Des phrases semblables ont des vecteurs semblables.",
        "Frases similares tienen vectores similares.",
    ),
    (
        "The winter was long and cold this year.",
        "L'hiver a été long et froid cette année.",
        "El invierno fue largo y frío este año.",
    ),
    (
        "Thank you very much for your help.",
        "Merci beaucoup pour votre aide.",
        "Muchas gracias por su ayuda.",
    ),
    (
        "The orders table has a foreign key to the customers table.",
        "La table des commandes a une clé étrangère vers la table des clients.",
        "La tabla de pedidos tiene una clave foránea a la tabla de clientes.",
    ),
    (
        "The airplane lands at half past six.",
        "L'avion atterrit à six heures et demie.",
        "El avión aterriza a las seis y media.",
    ),
    (
        "We walked along the beach at sunset.",
        "Nous avons marché le long de la plage au coucher du soleil.",
        "Caminamos por la playa al atardecer.",
    ),
    (
        "This kitchen needs a new oven.",
        "Cette cuisine a besoin d'un nouveau four.",
        "Esta cocina necesita un horno nuevo.",
    ),
    (
        "The students are preparing for the exam.",
        "Les étudiants préparent l'examen.",
        "Los estudiantes se preparan para el examen.",
    ),
    (
        "Restart the service without dropping a request.",
        "Redémarrez le service sans perdre une requête.",
        "Reinicie el servicio sin perder ninguna solicitud.",
    ),
    (
        "The mountains are covered with snow.",
        "Les montagnes sont couvertes de neige.",
        "Las montañas están cubiertas de nieve.",
    ),
    (
        "Music helps me concentrate.",
        "La musique m'aide à me concentrer.",
        "La música me ayuda a concentrarme.",
    ),
)

EXTRA_TEXT: tuple[str, ...] = (
    "def handler(request): return {'status': 200, 'tokens': 42}",
    "SELECT name, price FROM products WHERE price > 10 ORDER BY price DESC LIMIT 5;",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 -1 +1 = < > % & * ( ) [ ] { } # @ ! ?",
    "user assistant system tool function message content role",
    "https://example.com/v1/chat/completions?stream=true",
)

LANGUAGES: tuple[Language, ...] = ("en", "fr", "es")


def sentences(languages: tuple[Language, ...], *, count: int, seed: int) -> Iterator[str]:
    """Yield the corpus in ``languages`` and ``count`` seeded recombinations of its words."""
    columns = [LANGUAGES.index(lang) for lang in languages]
    base = [triple[col] for triple in PARALLEL for col in columns]
    yield from base
    yield from EXTRA_TEXT
    rng = random.Random(seed)
    vocabulary = sorted({word for line in base for word in line.split()})
    for _ in range(count):
        length = rng.randint(4, 14)
        words = [rng.choice(vocabulary) for _ in range(length)]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 9999)))
        yield " ".join(words)

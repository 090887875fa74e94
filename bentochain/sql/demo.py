"""The demo shop database: customers, products, orders and order items, with foreign keys.

Built by ``bentochain prepare`` from a fixed seed, so every machine has the same rows and the
same file. It is written to a temporary file and renamed into place, so a reader never sees a
half-built database, and left alone when it already holds this recipe's version.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
import tempfile
from pathlib import Path

VERSION = 1  # PRAGMA user_version of the file; bump when the recipe changes

SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    country TEXT NOT NULL,
    signed_up DATE NOT NULL
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price NUMERIC NOT NULL CHECK (price > 0)
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    ordered_at DATE NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'shipped', 'delivered', 'cancelled'))
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    unit_price NUMERIC NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
"""

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]
COUNTRIES = ["France", "Spain", "Germany", "United Kingdom", "United States", "Japan"]
PRODUCTS = [
    ("Espresso beans 1kg", "coffee", 24.0),
    ("Decaf beans 500g", "coffee", 13.5),
    ("Green tea 100g", "tea", 8.9),
    ("Earl grey 250g", "tea", 11.0),
    ("Pour-over kettle", "equipment", 59.0),
    ("Burr grinder", "equipment", 129.0),
    ("Ceramic dripper", "equipment", 22.0),
    ("Paper filters x100", "supplies", 4.5),
    ("Milk frother", "equipment", 35.0),
    ("Travel mug", "accessories", 19.9),
    ("Cold brew jar", "equipment", 27.0),
    ("Chai spice mix", "tea", 9.5),
]
STATUSES = ["pending", "shipped", "delivered", "delivered", "delivered", "cancelled"]


def build_shop(path: Path, seed: int = 7) -> bool:
    """Write the demo database to ``path``; False when it is already there and current."""
    if _current(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".shop-", suffix=".sqlite", dir=path.parent)
    os.close(fd)
    try:
        with sqlite3.connect(tmp) as db:
            db.executescript(SCHEMA)
            _fill(db, random.Random(seed))
            db.execute(f"PRAGMA user_version = {VERSION}")
        sqlite3.connect(tmp).close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def _current(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == VERSION


def _fill(db: sqlite3.Connection, rng: random.Random) -> None:
    start = dt.date(2025, 1, 1)
    customers = []
    for i in range(1, 41):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        signed = start + dt.timedelta(days=rng.randrange(0, 300))
        customers.append(
            (
                i,
                f"{first} {last}",
                f"{first}.{last}.{i}@example.com".lower(),
                rng.choice(COUNTRIES),
                signed.isoformat(),
            )
        )
    db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?)", customers)
    db.executemany(
        "INSERT INTO products VALUES (?, ?, ?, ?)",
        [(i, name, cat, price) for i, (name, cat, price) in enumerate(PRODUCTS, start=1)],
    )
    for order_id in range(1, 151):
        customer = rng.choice(customers)
        signed = dt.date.fromisoformat(customer[4])
        when = signed + dt.timedelta(days=rng.randrange(0, 365))
        db.execute(
            "INSERT INTO orders VALUES (?, ?, ?, ?)",
            (order_id, customer[0], when.isoformat(), rng.choice(STATUSES)),
        )
        for product_id in rng.sample(range(1, len(PRODUCTS) + 1), rng.randint(1, 4)):
            price = PRODUCTS[product_id - 1][2]
            db.execute(
                "INSERT INTO order_items VALUES (?, ?, ?, ?)",
                (order_id, product_id, rng.randint(1, 3), price),
            )

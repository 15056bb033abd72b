"""Synthetic shop generator: a catalogue, customers and their event stream, deterministic by seed.

The world has the structure of a real general store, so models and benchmarks meet the effects
they meet in production:

- items in ~30 categories with log-normal prices per category, Zipf-like popularity, launch dates
  spread over the period (no item has an event before its launch; new items get a novelty boost)
  and ~5% out of stock at the end (no carts or purchases after they sold out);
- customers with a Dirichlet taste over categories (kept as their top ``N_FAVOURITES``), a home
  city, a preferred device, a heavy-tailed activity level and a sign-up date (no events before it);
- a latent style (one of ``N_STYLES``) of every item and customer: customers pick items of their
  style ``1 + STYLE_BOOST`` times as often, so there is item-level signal for collaborative
  filtering beyond category taste and popularity (the item's brand reveals its style);
- sessions with a view -> add_to_cart -> purchase funnel: a purchase always follows a cart and a
  view of the same item in the same session;
- daily, weekly and yearly cycles (evenings and weekends are busier; Black Friday, Christmas);
- per-city daily weather (temperature and rain, deterministic by seed): rain raises demand for
  rainwear, heat for summer goods, cold for heating; weather, temperature, device and city are
  recorded in each event's ``context``;
- optionally (``reviews`` > 0) reviews: a share of purchases is followed 1-10 days later by a
  ``rating`` event whose star value (1-5) rises with the item's hidden appeal (its popularity
  percentile, the weight that drives its demand), so ratings carry signal about future sales.

Everything is drawn per block of sessions with numpy (never a Python loop per event). Each block
``(day, block)`` has its own random stream (``SeedSequence(seed, spawn_key=...)``), so the output
depends only on the arguments that shape the world, not on ``chunk_events``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.signal import lfilter
from scipy.special import ndtr

from scalerec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA, TIMESTAMP, USER_SCHEMA
from scalerec.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.data.store import DataStore

__all__ = [
    "CATEGORIES",
    "CITIES",
    "DEVICES",
    "EVENT_TYPES",
    "WEATHER_LABELS",
    "Catalog",
    "Category",
    "City",
    "SynthReport",
    "Users",
    "Weather",
    "day_event_counts",
    "event_chunks",
    "generate_store",
    "make_catalog",
    "make_users",
    "make_weather",
    "resolve_start",
]

US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S
#: Without ``start`` the period ends on this date (a fixed date keeps equal arguments reproducible).
DEFAULT_END = date(2025, 1, 1)
#: Events generated per random stream; the unit of determinism (independent of ``chunk_events``).
BLOCK_EVENTS = 1 << 18
#: How many of a customer's top categories are kept (the rest of a sparse Dirichlet is tiny).
N_FAVOURITES = 4
#: Latent styles; an item of the customer's own style is (1 + STYLE_BOOST) times as likely.
N_STYLES = 8
STYLE_BOOST = 4.0
#: Item draws search the whole catalogue's cumulative weights at once when they fit in cache (or
#: the draw is small), else category by category.
_CACHED_ITEMS = 1 << 17
_SMALL_DRAW = 1 << 14
#: Share of sessions by customers who are not logged in (``user_id`` null, ``session_id`` set).
ANONYMOUS_FRACTION = 0.05

EVENT_TYPES = ("view", "add_to_cart", "purchase")
DEVICES = ("mobile", "desktop", "app")
DEVICE_SHARES = (0.55, 0.30, 0.15)
WEATHER_LABELS = ("sun", "cloudy", "rain", "snow")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_SHARES = (0.14, 0.26, 0.22, 0.17, 0.13, 0.08)
GENDERS = ("female", "male", "other")
GENDER_SHARES = (0.52, 0.46, 0.02)

# Funnel: mean views per session, P(cart | view) at the category's median price, P(buy | cart).
MEAN_VIEWS = 4.5
P_CART = 0.10
P_BUY = 0.38
# Where a session's views come from: its focus category, another favourite, or the whole shop.
P_FOCUS, P_TASTE = 0.60, 0.20


@dataclass(frozen=True)
class Category:
    """A leaf category: its share of the catalogue and of base demand, prices, season, weather."""

    name: str
    department: str
    share: float
    price_median: float
    price_sigma: float
    nouns: tuple[str, ...]
    season: str = "flat"
    #: relative demand change on a rainy day (2.5 = 3.5x), per unit of heat (0 at 18 °C, 1 at
    #: 28 °C) and per unit of cold (0 at 10 °C, 1 at 0 °C)
    rain: float = 0.0
    heat: float = 0.0
    cold: float = 0.0


def _c(name, dept, share, median, sigma, nouns, season="flat", rain=0.0, heat=0.0, cold=0.0):
    return Category(name, dept, share, median, sigma, tuple(nouns.split(",")), season, rain, heat, cold)


CATEGORIES: tuple[Category, ...] = (
    _c("womenswear", "clothing", 0.07, 35, 0.6, "dress,blouse,skirt,jumper,jeans,cardigan"),
    _c("menswear", "clothing", 0.06, 38, 0.6, "shirt,chinos,jumper,jeans,polo shirt,blazer"),
    _c("kidswear", "clothing", 0.04, 18, 0.5, "t-shirt,school trousers,hoodie,pyjamas", "back_to_school"),
    _c("shoes", "clothing", 0.05, 55, 0.5, "trainers,boots,sandals,loafers,slippers"),
    _c("rainwear", "clothing", 0.03, 40, 0.6, "raincoat,umbrella,rain jacket,wellington boots,poncho",
       "autumn", rain=2.5, heat=-0.3),
    _c("outerwear", "clothing", 0.03, 85, 0.6, "winter coat,parka,down jacket,fleece", "winter",
       rain=0.3, cold=1.2),
    _c("swimwear", "clothing", 0.02, 25, 0.5, "swimsuit,bikini,swim shorts,beach towel", "summer",
       heat=1.5, rain=-0.3),
    _c("accessories", "clothing", 0.04, 15, 0.8, "scarf,belt,handbag,sunglasses,wallet"),
    _c("kitchen", "home", 0.06, 22, 0.9, "frying pan,knife set,kettle,blender,mug set,toaster"),
    _c("home_decor", "home", 0.05, 28, 0.8, "vase,cushion,picture frame,candle,mirror", "christmas"),
    _c("bedding", "home", 0.03, 40, 0.6, "duvet,pillow,sheet set,blanket", cold=0.3),
    _c("furniture", "home", 0.03, 220, 0.7, "sofa,desk,bookcase,dining chair,wardrobe"),
    _c("lighting", "home", 0.02, 35, 0.7, "table lamp,floor lamp,LED bulb,fairy lights", "winter"),
    _c("cleaning", "home", 0.03, 6, 0.5, "detergent,sponges,mop,bin bags,surface spray"),
    _c("garden", "garden", 0.04, 25, 0.9, "plant pot,hose,seeds,lawn feed,pruning shears", "spring",
       rain=-0.3, heat=0.3),
    _c("bbq", "garden", 0.015, 60, 0.8, "charcoal grill,gas barbecue,grill tools,charcoal", "summer",
       rain=-0.5, heat=1.2),
    _c("summer_goods", "garden", 0.025, 20, 0.7, "desk fan,paddling pool,sun cream,cool box,parasol",
       "summer", rain=-0.4, heat=2.5),
    _c("heating", "home", 0.015, 70, 0.6, "oil heater,electric blanket,fan heater,hot water bottle",
       "winter", cold=2.5),
    _c("phones", "electronics", 0.03, 320, 0.7, "smartphone,phone case,charger,screen protector"),
    _c("computers", "electronics", 0.03, 550, 0.6, "laptop,monitor,keyboard,mouse,tablet"),
    _c("audio", "electronics", 0.03, 60, 0.9, "headphones,speaker,earbuds,soundbar"),
    _c("tv_video", "electronics", 0.02, 450, 0.6, "television,streaming stick,projector", "christmas"),
    _c("gaming", "electronics", 0.025, 45, 0.8, "video game,controller,console,gaming headset",
       "christmas"),
    _c("toys", "toys", 0.05, 20, 0.8, "building set,doll,board game,puzzle,toy car", "christmas"),
    _c("books", "media", 0.05, 12, 0.4, "novel,cookbook,children's book,biography"),
    _c("sports", "sports", 0.04, 35, 0.9, "yoga mat,dumbbells,football,running shirt,bike helmet",
       "spring"),
    _c("stationery", "office", 0.02, 5, 0.7, "notebook,pen set,backpack,pencil case", "back_to_school"),
    _c("beauty", "health_beauty", 0.05, 14, 0.7, "lipstick,moisturiser,shampoo,perfume"),
    _c("health", "health_beauty", 0.03, 9, 0.6, "vitamins,cold remedy,thermometer,plasters", "winter",
       cold=0.4),
    _c("groceries", "food", 0.05, 4, 0.6, "coffee,tea,pasta,olive oil,chocolate"),
    _c("pet_supplies", "pets", 0.03, 16, 0.7, "dog food,cat litter,pet bed,chew toy"),
    _c("baby", "baby", 0.025, 22, 0.7, "nappies,baby wipes,bottle,baby monitor"),
    _c("diy_tools", "diy", 0.03, 40, 0.9, "drill,screwdriver set,paint,ladder,toolbox", "spring"),
)


@dataclass(frozen=True)
class City:
    """A customer location and its climate (daytime temperature in °C, daily rain probability)."""

    name: str
    share: float
    temp_mean: float
    temp_amplitude: float
    rain_winter: float
    rain_summer: float


# All in one time zone (UTC, ignoring summer time) so local and UTC hours agree.
CITIES: tuple[City, ...] = (
    City("London", 0.30, 15.5, 7.5, 0.40, 0.30),
    City("Manchester", 0.14, 14.0, 6.5, 0.55, 0.42),
    City("Edinburgh", 0.10, 12.5, 6.0, 0.50, 0.42),
    City("Dublin", 0.12, 13.0, 5.5, 0.52, 0.40),
    City("Cardiff", 0.07, 14.5, 6.5, 0.55, 0.40),
    City("Lisbon", 0.16, 21.5, 6.5, 0.40, 0.05),
    City("Porto", 0.11, 19.0, 5.5, 0.48, 0.12),
)

ADJECTIVES = (
    "Classic", "Essential", "Premium", "Everyday", "Deluxe", "Compact", "Eco", "Vintage", "Modern",
    "Urban", "Nordic", "Pro", "Lightweight", "Soft", "Smart", "Family", "Studio", "Heritage",
)
BRANDS = (
    "Acorn", "Brightline", "Cobalt", "Dovetail", "Evergreen", "Foxglove", "Granite", "Harbour",
    "Ivory", "Juniper", "Kestrel", "Lumen", "Meridian", "Northwind", "Orchard", "Pebble",
)
COLORS = ("black", "white", "grey", "navy", "red", "green", "blue", "beige", "pink", "yellow")

# Busyness by hour of day (UTC = local), weekdays and weekends: low at 3-5 am, evening peak.
_HOURS_WEEKDAY = np.array(
    [1.2, 0.7, 0.45, 0.3, 0.3, 0.45, 0.9, 1.6, 2.4, 3.0, 3.3, 3.5,
     3.9, 3.7, 3.4, 3.4, 3.6, 4.1, 4.9, 5.8, 6.3, 6.0, 4.5, 2.6]
)
_HOURS_WEEKEND = np.array(
    [1.6, 1.0, 0.6, 0.35, 0.3, 0.35, 0.6, 1.0, 1.8, 2.8, 3.7, 4.3,
     4.5, 4.4, 4.2, 4.2, 4.3, 4.5, 4.9, 5.5, 5.9, 5.6, 4.4, 2.8]
)
# Monday .. Sunday
_WEEKDAY_VOLUME = np.array([0.95, 0.93, 0.95, 0.97, 1.0, 1.18, 1.22])


def _rng(seed: int, *key: int) -> np.random.Generator:
    # One independent stream per purpose/day/block: spawn_key makes them reproducible by key.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _categorical(rng: np.random.Generator, probs, size: int) -> np.ndarray:
    cum = np.cumsum(np.asarray(probs, dtype=np.float64))
    cum /= cum[-1]
    return np.minimum(np.searchsorted(cum, rng.random(size), side="right"), len(cum) - 1)


def resolve_start(start: date | datetime | str | None, days: int) -> datetime:
    """Midnight UTC of the first day: ``start`` (a date, datetime or ISO string), or
    ``DEFAULT_END - days`` when None."""
    if start is None:
        start = DEFAULT_END - timedelta(days=days)
    if isinstance(start, str):
        try:
            start = date.fromisoformat(start.strip()[:10])
        except ValueError:
            raise ValidationError(
                f"start {start!r} is not a date; write it as YYYY-MM-DD, for example 2024-07-01"
            ) from None
    if isinstance(start, datetime):
        if start.tzinfo is not None:
            start = start.astimezone(timezone.utc)
        start = start.date()
    return datetime(start.year, start.month, start.day, tzinfo=timezone.utc)


def _start_us(start: datetime) -> int:
    return int(start.timestamp()) * US_PER_S


def _fixed_width_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.StringArray:
    """``prefix`` + zero-padded decimal ``numbers`` as an Arrow string array, built from one
    byte buffer (no Python string per row)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    n = len(numbers)
    head = np.frombuffer(prefix.encode(), dtype=np.uint8)
    w = len(head) + width
    buf = np.empty((n, w), dtype=np.uint8)
    buf[:, : len(head)] = head
    x = numbers.copy()
    for j in range(w - 1, len(head) - 1, -1):  # one pass per digit
        buf[:, j] = 48 + x % 10
        x //= 10
    offsets = np.arange(0, (n + 1) * w, w, dtype=np.int64 if n * w >= 2**31 else np.int32)
    if offsets.dtype == np.int64:
        return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf)).cast(pa.string())
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf))


def _flat_map(keys: tuple[str, ...], vocab: pa.Array, value_idx: np.ndarray) -> pa.MapArray:
    """A map<string,string> column with the same ``keys`` in every row; ``value_idx`` is
    [n_rows, len(keys)] indices into ``vocab``."""
    n, k = value_idx.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    key_arr = pc.take(pa.array(keys, pa.string()), pa.array(np.tile(np.arange(k, dtype=np.int32), n)))
    values = pc.take(vocab, pa.array(value_idx.reshape(-1)))
    return pa.MapArray.from_arrays(offsets, key_arr, values)


def _id_width(n: int) -> int:
    return max(6, len(str(max(n, 1))))


# ---------------------------------------------------------------------------------------------
# Catalogue


@dataclass
class Catalog:
    """The items, column-wise. Arrays have shape [n_items]; days are relative to ``start``."""

    item_ids: pa.StringArray
    category: np.ndarray  # int16, index into CATEGORIES
    price: np.ndarray  # float64, currency units
    popularity: np.ndarray  # float64 base weight (Zipf over a random ranking)
    launch_day: np.ndarray  # int32; negative = launched before the period
    stockout_day: np.ndarray  # int32; day from which it is out of stock; >= days = never
    adjective: np.ndarray  # int16 into ADJECTIVES
    noun: np.ndarray  # int16 into the category's nouns
    brand: np.ndarray  # int16 into BRANDS (two brands per style)
    color: np.ndarray  # int16 into COLORS
    style: np.ndarray  # int8, latent style in [0, N_STYLES)
    start: datetime
    days: int

    @property
    def n_items(self) -> int:
        return len(self.category)

    @property
    def available(self) -> np.ndarray:
        """bool [n_items]: in stock at the end of the period."""
        return self.stockout_day >= self.days

    @property
    def launch_us(self) -> np.ndarray:
        """int64 [n_items]: launch time in UTC microseconds (midnight of the launch day)."""
        return _start_us(self.start) + self.launch_day.astype(np.int64) * US_PER_DAY

    def to_table(self) -> pa.Table:
        """The catalogue in ITEM_SCHEMA; ``categories`` is [leaf category, department]."""
        n = self.n_items
        cat_names = pa.array([c.name for c in CATEGORIES] + sorted({c.department for c in CATEGORIES}))
        dept_index = {name: i for i, name in enumerate(cat_names.to_pylist())}
        dept_of_cat = np.array([dept_index[c.department] for c in CATEGORIES], dtype=np.int32)
        cat_idx = np.stack([self.category.astype(np.int32), dept_of_cat[self.category]], axis=1)
        categories = pa.ListArray.from_arrays(
            pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), pc.take(cat_names, pa.array(cat_idx.reshape(-1)))
        )
        # Nouns of all categories in one vocabulary: noun index = category offset + local index.
        noun_offset = np.cumsum([0] + [len(c.nouns) for c in CATEGORIES])
        nouns = pa.array([noun for c in CATEGORIES for noun in c.nouns])
        noun_arr = pc.take(nouns, pa.array(noun_offset[self.category] + self.noun))
        adj_arr = pc.take(pa.array(ADJECTIVES), pa.array(self.adjective.astype(np.int32)))
        brand_arr = pc.take(pa.array(BRANDS), pa.array(self.brand.astype(np.int32)))
        color_arr = pc.take(pa.array(COLORS), pa.array(self.color.astype(np.int32)))
        title = pc.binary_join_element_wise(adj_arr, noun_arr, " ")
        description = pc.binary_join_element_wise(
            pa.scalar("A"), color_arr, noun_arr, pa.scalar("by"), brand_arr, pa.scalar(" ")
        )
        attr_vocab = pa.array(list(BRANDS) + list(COLORS))
        attr_idx = np.stack([self.brand.astype(np.int32), len(BRANDS) + self.color.astype(np.int32)], axis=1)
        attributes = _flat_map(("brand", "color"), attr_vocab, attr_idx)
        return pa.Table.from_arrays(
            [
                self.item_ids,
                title,
                description,
                categories,
                pa.array(self.price, pa.float64()),
                pa.array(self.available, pa.bool_()),
                attributes,
                pa.array(self.launch_us, TIMESTAMP),
            ],
            schema=ITEM_SCHEMA,
        )


def make_catalog(n_items: int, *, seed: int, days: int = 180, start: date | datetime | str | None = None) -> Catalog:
    """Draw ``n_items`` items (at least one per category, so at least ``len(CATEGORIES)``).

    Half the catalogue exists before the period, the other half launches on days spread over it;
    every category keeps at least one item launched before the period so it can always be sampled.
    """
    _check_int("n_items", n_items, len(CATEGORIES))
    _check_int("days", days, 1)
    _check_int("seed", seed, 0)
    start_dt = resolve_start(start, days)
    rng = _rng(seed, 1)
    n, n_cat = n_items, len(CATEGORIES)
    shares = np.array([c.share for c in CATEGORIES])
    category = _categorical(rng, shares, n)
    category[rng.choice(n, size=n_cat, replace=False)] = np.arange(n_cat)  # every category present
    category = category.astype(np.int16)

    medians = np.array([c.price_median for c in CATEGORIES])
    sigmas = np.array([c.price_sigma for c in CATEGORIES])
    raw = np.exp(np.log(medians[category]) + sigmas[category] * rng.standard_normal(n))
    # Shop prices: x.99 above 10, x.x9 below, never under 0.49.
    price = np.where(raw >= 10, np.floor(raw) + 0.99, np.maximum(np.round(np.floor(raw * 10) / 10 + 0.09, 2), 0.49))

    # Zipf-like: weight 1/rank^1.05 over a random global ranking (heavy tail inside each category too).
    popularity = (rng.permutation(n) + 1.0) ** -1.05

    old = rng.random(n) < 0.5
    launch_day = np.where(old, -rng.integers(1, 731, n), rng.integers(0, days, n)).astype(np.int32)
    _, first = np.unique(category, return_index=True)
    launch_day[first] = np.minimum(launch_day[first], -1)

    # ~5% sell out at some day between their launch (or the start) and the end, for good.
    sold_out = rng.random(n) < 0.05
    lo = np.maximum(launch_day, 0) + 1
    stockout = lo + np.floor(rng.random(n) * np.maximum(days - lo, 0)).astype(np.int64)
    stockout_day = np.where(sold_out & (lo < days), stockout, np.iinfo(np.int32).max // 2).astype(np.int32)

    n_nouns = np.array([len(c.nouns) for c in CATEGORIES])
    noun = np.floor(rng.random(n) * n_nouns[category]).astype(np.int16)
    style = rng.integers(0, N_STYLES, n).astype(np.int8)
    per_style = len(BRANDS) // N_STYLES  # the brand gives the style away, as in a real shop
    brand = (style.astype(np.int16) * per_style + rng.integers(0, per_style, n)).astype(np.int16)
    return Catalog(
        item_ids=_fixed_width_ids("i", np.arange(1, n + 1), _id_width(n)),
        category=category,
        price=price,
        popularity=popularity,
        launch_day=launch_day,
        stockout_day=stockout_day,
        adjective=rng.integers(0, len(ADJECTIVES), n).astype(np.int16),
        noun=noun,
        brand=brand,
        color=rng.integers(0, len(COLORS), n).astype(np.int16),
        style=style,
        start=start_dt,
        days=days,
    )


# ---------------------------------------------------------------------------------------------
# Customers


@dataclass
class Users:
    """The customers, column-wise. Arrays have shape [n_users] (``fav_*``: [n_users, N_FAVOURITES])."""

    user_ids: pa.StringArray
    created_us: np.ndarray  # int64 UTC microseconds (sign-up time)
    city: np.ndarray  # int8 into CITIES
    device: np.ndarray  # int8 into DEVICES (preferred)
    activity: np.ndarray  # float32, relative session rate (log-normal)
    age_band: np.ndarray  # int8 into AGE_BANDS
    gender: np.ndarray  # int8 into GENDERS
    fav_categories: np.ndarray  # int16, top categories by taste, most liked first
    fav_weights: np.ndarray  # float32, taste weights of fav_categories (rows sum to 1)
    style: np.ndarray  # int8, latent style in [0, N_STYLES)
    start: datetime
    days: int

    @property
    def n_users(self) -> int:
        return len(self.city)

    def to_table(self) -> pa.Table:
        """The customers in USER_SCHEMA; attributes: location, age_band, gender, device."""
        vocab = pa.array([c.name for c in CITIES] + list(AGE_BANDS) + list(GENDERS) + list(DEVICES))
        o_age = len(CITIES)
        o_gender = o_age + len(AGE_BANDS)
        o_device = o_gender + len(GENDERS)
        idx = np.stack(
            [
                self.city.astype(np.int32),
                o_age + self.age_band.astype(np.int32),
                o_gender + self.gender.astype(np.int32),
                o_device + self.device.astype(np.int32),
            ],
            axis=1,
        )
        attributes = _flat_map(("location", "age_band", "gender", "device"), vocab, idx)
        return pa.Table.from_arrays(
            [self.user_ids, attributes, pa.array(self.created_us, TIMESTAMP)], schema=USER_SCHEMA
        )


def make_users(n_users: int, *, seed: int, days: int = 180, start: date | datetime | str | None = None) -> Users:
    """Draw ``n_users`` customers: 65% signed up in the two years before the period, the rest
    during it (the first customer always before it, so day 0 has someone to shop)."""
    _check_int("n_users", n_users, 1)
    _check_int("days", days, 1)
    _check_int("seed", seed, 0)
    start_dt = resolve_start(start, days)
    rng = _rng(seed, 2)
    n, n_cat = n_users, len(CATEGORIES)
    t0 = _start_us(start_dt)
    new = rng.random(n) < 0.35
    u = rng.random(n)
    created = np.where(new, t0 + u * (days * US_PER_DAY), t0 - (1 - u) * (730 * US_PER_DAY)).astype(np.int64)
    created[0] = min(created[0], t0 - int((1 + u[0]) * US_PER_DAY))
    city = _categorical(rng, [c.share for c in CITIES], n).astype(np.int8)
    device = _categorical(rng, DEVICE_SHARES, n).astype(np.int8)
    activity = rng.lognormal(0.0, 1.0, n).astype(np.float32)
    age = _categorical(rng, AGE_SHARES, n).astype(np.int8)
    gender = _categorical(rng, GENDER_SHARES, n).astype(np.int8)

    # Sparse Dirichlet taste (total concentration 2): most customers love two or three categories.
    alpha = 2.0 * np.array([c.share for c in CATEGORIES]) / sum(c.share for c in CATEGORIES)
    fav_cat = np.empty((n, N_FAVOURITES), dtype=np.int16)
    fav_w = np.empty((n, N_FAVOURITES), dtype=np.float32)
    step = 100_000  # bounded memory: [step, n_cat] gammas at a time
    for lo in range(0, n, step):
        g = rng.gamma(alpha, size=(min(step, n - lo), n_cat)) + 1e-12
        top = np.argpartition(-g, N_FAVOURITES - 1, axis=1)[:, :N_FAVOURITES]
        w = np.take_along_axis(g, top, axis=1)
        order = np.argsort(-w, axis=1)
        fav_cat[lo : lo + len(g)] = np.take_along_axis(top, order, axis=1)
        w = np.take_along_axis(w, order, axis=1)
        fav_w[lo : lo + len(g)] = w / w.sum(axis=1, keepdims=True)
    return Users(
        user_ids=_fixed_width_ids("u", np.arange(1, n + 1), _id_width(n)),
        created_us=created,
        city=city,
        device=device,
        activity=activity,
        age_band=age,
        gender=gender,
        fav_categories=fav_cat,
        fav_weights=fav_w,
        style=rng.integers(0, N_STYLES, n).astype(np.int8),
        start=start_dt,
        days=days,
    )


# ---------------------------------------------------------------------------------------------
# Weather, seasons and volume


@dataclass
class Weather:
    """Daily weather per city: ``temp_c`` float32 [n_cities, days] (daytime °C) and ``label``
    int8 [n_cities, days] into WEATHER_LABELS."""

    temp_c: np.ndarray
    label: np.ndarray

    @property
    def wet(self) -> np.ndarray:
        """bool [n_cities, days]: rain or snow."""
        return self.label >= WEATHER_LABELS.index("rain")


def _day_of_year(start: datetime, days: int) -> np.ndarray:
    return (start.timetuple().tm_yday - 1 + np.arange(days)) % 365


def make_weather(*, seed: int, days: int = 180, start: date | datetime | str | None = None) -> Weather:
    """Deterministic daily weather for every city: a seasonal mean plus persistent AR(1) anomalies;
    rain with a seasonal probability and persistence (wet spells)."""
    _check_int("days", days, 1)
    start_dt = resolve_start(start, days)
    rng = _rng(seed, 3)
    n_city = len(CITIES)
    doy = _day_of_year(start_dt, days)
    winter = np.cos(2 * np.pi * (doy - 20) / 365.25)  # 1 on ~21 January, -1 in July
    mean = np.array([c.temp_mean for c in CITIES])[:, None]
    amp = np.array([c.temp_amplitude for c in CITIES])[:, None]
    phi_t, phi_r = 0.75, 0.55
    anomaly = lfilter([np.sqrt(1 - phi_t**2)], [1, -phi_t], rng.standard_normal((n_city, days)), axis=1)
    temp = mean - amp * winter[None, :] + 3.0 * anomaly
    p_rain_w = np.array([c.rain_winter for c in CITIES])[:, None]
    p_rain_s = np.array([c.rain_summer for c in CITIES])[:, None]
    p_rain = p_rain_s + (p_rain_w - p_rain_s) * (1 + winter[None, :]) / 2
    wet_latent = lfilter([np.sqrt(1 - phi_r**2)], [1, -phi_r], rng.standard_normal((n_city, days)), axis=1)
    wet = ndtr(wet_latent) < p_rain
    cloudy = rng.random((n_city, days)) < 0.5
    label = np.where(wet, np.where(temp <= 1.0, 3, 2), np.where(cloudy, 1, 0)).astype(np.int8)
    return Weather(temp_c=np.round(temp, 1).astype(np.float32), label=label)


def _season_factor(kind: str, doy: np.ndarray) -> np.ndarray:
    def peak(day: float) -> np.ndarray:  # 1 at ``day``, 0 half a year away
        return (1 + np.cos(2 * np.pi * (doy - day) / 365.25)) / 2

    def bump(day: float, width: float) -> np.ndarray:
        dist = (doy - day + 182) % 365 - 182
        return np.exp(-0.5 * (dist / width) ** 2)

    if kind == "summer":
        return 0.3 + 1.7 * peak(196) ** 2
    if kind == "winter":
        return 0.4 + 1.6 * peak(15) ** 2
    if kind == "spring":
        return 0.6 + 0.9 * peak(130) ** 2
    if kind == "autumn":
        return 0.8 + 0.6 * peak(300) ** 2
    if kind == "christmas":
        return 1.0 + 2.5 * bump(345, 16)
    if kind == "back_to_school":
        return 1.0 + 1.5 * bump(240, 12)
    return np.ones_like(doy, dtype=np.float64)


def _category_multipliers(start: datetime, days: int, weather: Weather) -> np.ndarray:
    """float64 [days, n_cities, n_categories]: season x rain x heat x cold demand multiplier."""
    doy = _day_of_year(start, days)
    season = np.stack([_season_factor(c.season, doy) for c in CATEGORIES], axis=1)  # [days, C]
    rain = np.array([c.rain for c in CATEGORIES])
    heat = np.array([c.heat for c in CATEGORIES])
    cold = np.array([c.cold for c in CATEGORIES])
    temp = weather.temp_c.T.astype(np.float64)[:, :, None]  # [days, cities, 1]
    wet = weather.wet.T[:, :, None]
    heat_x = np.clip((temp - 18.0) / 10.0, 0.0, 1.5)
    cold_x = np.clip((10.0 - temp) / 10.0, 0.0, 1.5)
    mult = season[:, None, :] * (1 + rain * wet) * (1 + heat * heat_x) * (1 + cold * cold_x)
    return np.maximum(mult, 0.05)


def _holiday_factor(d: date) -> float:
    if d.month == 11:
        thursdays = [x for x in range(22, 29) if date(d.year, 11, x).weekday() == 3]
        black_friday = date(d.year, 11, thursdays[0] + 1)
        if d == black_friday:
            return 2.3
        if d == black_friday + timedelta(days=3):  # Cyber Monday
            return 1.8
    if d.month == 12:
        return {24: 0.8, 25: 0.6, 26: 1.4}.get(d.day, 1.25 if d.day <= 20 else 1.0)
    if d.month == 1 and d.day <= 14:  # January sales
        return 1.1
    return 1.0


def day_event_counts(
    n_events: int, *, seed: int, days: int = 180, start: date | datetime | str | None = None
) -> np.ndarray:
    """int64 [days]: how many of ``n_events`` fall on each day (sums exactly to ``n_events``):
    weekly cycle, holidays, 30% growth over the period and a little daily noise."""
    start_dt = resolve_start(start, days)
    rng = _rng(seed, 4)
    dates = [start_dt.date() + timedelta(days=i) for i in range(days)]
    weekly = _WEEKDAY_VOLUME[[d.weekday() for d in dates]]
    holiday = np.array([_holiday_factor(d) for d in dates])
    growth = 1 + 0.3 * np.arange(days) / max(days - 1, 1)
    w = weekly * holiday * growth * np.exp(0.07 * rng.standard_normal(days))
    exact = n_events * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    rest = n_events - int(counts.sum())
    if rest:  # largest remainders, ties by day
        counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1
    return counts


# ---------------------------------------------------------------------------------------------
# Events


class _World:
    """Everything an event block needs that does not change within a day, built once per run."""

    def __init__(self, catalog: Catalog, users: Users, seed: int) -> None:
        if catalog.start != users.start or catalog.days != users.days:
            raise ValidationError(
                "catalog and users were made for different periods "
                f"({catalog.start:%Y-%m-%d}+{catalog.days}d vs {users.start:%Y-%m-%d}+{users.days}d); "
                "pass the same start and days to make_catalog and make_users"
            )
        self.catalog, self.users, self.seed = catalog, users, seed
        self.start, self.days = catalog.start, catalog.days
        self.start_us = _start_us(catalog.start)
        self.weather = make_weather(seed=seed, days=self.days, start=self.start)
        self.mult = _category_multipliers(self.start, self.days, self.weather)
        # Items grouped by category, then style: category c occupies [cat_lo[c], cat_lo[c+1]) of
        # by_cat, and its items of style s [cs_lo[c * N_STYLES + s], cs_lo[c * N_STYLES + s + 1]).
        self.by_cat = np.lexsort((catalog.style, catalog.category))
        counts = np.bincount(catalog.category, minlength=len(CATEGORIES))
        self.cat_lo = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        cs_counts = np.bincount(catalog.category.astype(np.int64) * N_STYLES + catalog.style,
                                minlength=len(CATEGORIES) * N_STYLES)
        self.cs_lo = np.concatenate([[0], np.cumsum(cs_counts)]).astype(np.int64)
        self.pop_sorted = catalog.popularity[self.by_cat]
        self.launch_sorted = catalog.launch_day[self.by_cat]
        self.stockout_sorted = catalog.stockout_day[self.by_cat]
        medians = np.array([c.price_median for c in CATEGORIES])
        rel_price = catalog.price / medians[catalog.category]
        self.p_cart = np.clip(P_CART * rel_price**-0.25, 0.0, 0.5)  # cheaper -> carted more often
        # Customers ordered by sign-up: the first k of them are the ones who exist on a day.
        self.user_order = np.argsort(users.created_us, kind="stable")
        self.created_sorted = users.created_us[self.user_order]
        self.activity_cum = np.cumsum(users.activity[self.user_order].astype(np.float64))
        hours = [_HOURS_WEEKDAY, _HOURS_WEEKEND]
        self.hour_cum = [np.concatenate([[0.0], np.cumsum(h) / h.sum()]) for h in hours]
        # Context vocabulary: devices, cities, weather labels, temperatures -40.0 .. 50.0.
        self.temp_lo, n_temp = -400, 901
        self.o_city = len(DEVICES)
        self.o_weather = self.o_city + len(CITIES)
        self.o_temp = self.o_weather + len(WEATHER_LABELS)
        self.context_vocab = pa.array(
            list(DEVICES) + [c.name for c in CITIES] + list(WEATHER_LABELS)
            + [f"{(self.temp_lo + i) / 10:.1f}" for i in range(n_temp)]
        )
        self.event_type_vocab = pa.array(EVENT_TYPES)
        self._day: int | None = None

    def day(self, d: int) -> None:
        """Prepare the per-day sampling tables (item weights, category draws) for day ``d``."""
        if self._day == d:
            return
        self._day = d
        age = d - self.launch_sorted
        launched = age >= 0
        novelty = 1.0 + 2.0 * np.exp(-np.maximum(age, 0) / 14.0)  # new items get a boost
        in_stock = d < self.stockout_sorted
        w = np.where(launched, self.pop_sorted * novelty * np.where(in_stock, 1.0, 0.3), 0.0)
        self.item_cum = np.concatenate([[0.0], np.cumsum(w)])
        self.in_stock_sorted = in_stock
        cat_total = self.item_cum[self.cat_lo[1:]] - self.item_cum[self.cat_lo[:-1]]
        # Whole-shop draws: category by its launched items' popularity x today's multiplier,
        # per city, as one flat inverse-CDF table with city i occupying (i, i+1].
        m = self.mult[d] * cat_total[None, :]
        cum = np.cumsum(m, axis=1)
        cum = cum / cum[:, -1:]
        cum[:, -1] = 1.0
        self.city_cat_cum = (cum + np.arange(len(CITIES))[:, None]).reshape(-1)
        self.weekend = (self.start.date() + timedelta(days=d)).weekday() >= 5
        n_existing = int(np.searchsorted(self.created_sorted, self.start_us + d * US_PER_DAY, side="left"))
        self.n_existing = max(n_existing, 1)

    # -- draws ------------------------------------------------------------------------------

    def draw_items(self, rng: np.random.Generator, cat: np.ndarray, style: np.ndarray) -> np.ndarray:
        """Item positions (into by_cat order) for categories ``cat`` by today's item weights, items
        of the customer's ``style`` boosted: an exact mixture of "any item of the category" and
        "an item of the category and style", each an inverse-CDF draw on a contiguous range."""
        n = len(cat)
        u_mix, u = rng.random(n), rng.random(n)
        cum = self.item_cum
        lo, hi = self.cat_lo[cat], self.cat_lo[cat + 1]
        key = cat * N_STYLES + style
        s_lo, s_hi = self.cs_lo[key], self.cs_lo[key + 1]
        own = cum[s_hi] - cum[s_lo]
        # P(item i) = w_i (1 + B [style_i = s]) / (W + B W_s): the style range with this probability
        pick = u_mix * (cum[hi] - cum[lo] + STYLE_BOOST * own) < STYLE_BOOST * own
        a = np.where(pick, s_lo, lo)
        b = np.where(pick, s_hi, hi)
        target = cum[a] + u * (cum[b] - cum[a])
        if len(cum) <= _CACHED_ITEMS or n <= _SMALL_DRAW:
            found = np.searchsorted(cum, target, side="right")
        else:
            # One search per category block (a loop over categories, not events): a block's
            # cumulative weights fit in cache, several times faster than searching the whole
            # catalogue's array with random targets. Same result as the global search.
            found = np.empty(n, dtype=np.int64)
            order = np.argsort(cat, kind="stable")
            bounds = np.concatenate([[0], np.cumsum(np.bincount(cat, minlength=len(CATEGORIES)))])
            for c in np.flatnonzero(np.diff(bounds)):
                rows = order[bounds[c] : bounds[c + 1]]
                c_lo, c_hi = int(self.cat_lo[c]), int(self.cat_lo[c + 1])
                found[rows] = c_lo + np.searchsorted(cum[c_lo : c_hi + 1], target[rows], side="right")
        return np.clip(found - 1, a, b - 1)

    def draw_favourite(self, rng: np.random.Generator, user: np.ndarray, city: np.ndarray, d: int) -> np.ndarray:
        """A category per row from the customer's favourites x today's multiplier in their city."""
        fav = self.users.fav_categories[user]
        w = self.users.fav_weights[user] * self.mult[d][city[:, None], fav]
        cum = np.cumsum(w, axis=1)
        k = (cum < (rng.random(len(user)) * cum[:, -1])[:, None]).sum(axis=1)
        return fav[np.arange(len(user)), np.minimum(k, N_FAVOURITES - 1)].astype(np.int64)

    def draw_shop_category(self, rng: np.random.Generator, city: np.ndarray) -> np.ndarray:
        j = np.searchsorted(self.city_cat_cum, city + rng.random(len(city)), side="right")
        return np.clip(j - city * len(CATEGORIES), 0, len(CATEGORIES) - 1)

    def seconds_of_day(self, q: np.ndarray) -> np.ndarray:
        """Inverse CDF of the hourly profile: quantiles ``q`` in [0, 1) -> seconds after midnight."""
        cum = self.hour_cum[int(self.weekend)]
        h = np.clip(np.searchsorted(cum, q, side="right") - 1, 0, 23)
        frac = (q - cum[h]) / (cum[h + 1] - cum[h])
        return (h + frac) * 3600.0


def _block(world: _World, d: int, b: int, n_blocks: int, n_target: int) -> pa.Table:
    """Exactly ``n_target`` events of day ``d``, block ``b`` of ``n_blocks`` (the b-th slice of the
    day's time-of-day distribution), rows grouped by session in session start order."""
    world.day(d)
    cat = world.catalog
    attempt = 0
    while True:
        # Over-draw sessions, then keep a random subset (not a time prefix, which would leave a
        # gap at the end of the slice) whose events add up exactly to n_target.
        rng = _rng(world.seed, 5, d, b, attempt)
        n_sess = int(n_target / (MEAN_VIEWS * 1.12) * 1.1 * 1.5**attempt) + 16
        drawn = _draw_sessions(world, rng, d, b, n_blocks, n_sess)
        total = np.cumsum(drawn["n_events"])
        if total[-1] >= n_target:
            break
        attempt += 1

    keep_order = rng.permutation(n_sess)
    cum_perm = np.cumsum(drawn["n_events"][keep_order])
    n_keep_sessions = int(np.searchsorted(cum_perm, n_target, side="left")) + 1
    kept = np.zeros(n_sess, dtype=bool)
    kept[keep_order[:n_keep_sessions]] = True
    n_keep = drawn["n_events"].copy()
    last = keep_order[n_keep_sessions - 1]
    n_keep[last] -= int(cum_perm[n_keep_sessions - 1]) - n_target  # cut that session's tail
    return _assemble(world, drawn, kept, n_keep[kept], d, b)


def _draw_sessions(world: _World, rng: np.random.Generator, d: int, b: int, n_blocks: int, n: int) -> dict:
    users = world.users
    # Session starts, sorted: quantiles of this block's slice of the day.
    q = (b + np.sort(rng.random(n))) / n_blocks
    t0 = world.start_us + d * US_PER_DAY + (world.seconds_of_day(q) * US_PER_S).astype(np.int64)
    # Customers who have signed up before today, by activity.
    # (Sorted targets make the search cache-friendly; the shuffle undoes the order.)
    cum = world.activity_cum[: world.n_existing]
    found = np.searchsorted(cum, np.sort(rng.random(n)) * cum[-1], side="right")
    user = world.user_order[np.minimum(found, world.n_existing - 1)][rng.permutation(n)]
    anonymous = rng.random(n) < ANONYMOUS_FRACTION
    city = users.city[user].astype(np.int64)
    device = np.where(rng.random(n) < 0.8, users.device[user], rng.integers(0, len(DEVICES), n))
    n_views = np.minimum(rng.geometric(1.0 / MEAN_VIEWS, n), 40)
    focus = world.draw_favourite(rng, user, city, d)

    # Views: from the session's focus category, another favourite, or anywhere in the shop.
    sess_of_view = np.repeat(np.arange(n), n_views)
    n_v = len(sess_of_view)
    source = rng.random(n_v)
    view_cat = focus[sess_of_view]
    taste = (source >= P_FOCUS) & (source < P_FOCUS + P_TASTE)
    ts = sess_of_view[taste]
    view_cat[taste] = world.draw_favourite(rng, user[ts], city[ts], d)
    shop = source >= P_FOCUS + P_TASTE
    view_cat[shop] = world.draw_shop_category(rng, city[sess_of_view[shop]])
    pos = world.draw_items(rng, view_cat, users.style[user][sess_of_view])
    item = world.by_cat[pos]
    cart = rng.random(n_v) < world.p_cart[item] * world.in_stock_sorted[pos]
    buy = cart & (rng.random(n_v) < P_BUY)
    quantity = np.where(cart, np.minimum(rng.geometric(0.85, n_v), 5), 1).astype(np.float32)

    # Times: views a few seconds to minutes apart; a cart shortly after its view (before the
    # next view); purchases at checkout after the last view.
    gap = (rng.exponential(40.0, n_v) + 3.0) * US_PER_S
    gap = gap.astype(np.int64)
    csum = np.cumsum(gap)
    first_view = np.cumsum(n_views) - n_views
    view_t = t0[sess_of_view] + csum - csum[first_view][sess_of_view]
    next_gap = np.roll(gap, -1)
    cart_t = view_t + ((0.2 + 0.6 * rng.random(n_v)) * next_gap).astype(np.int64)
    last_view = first_view + n_views - 1
    checkout = view_t[last_view] + next_gap[last_view] + (
        (30.0 + rng.exponential(90.0, n)) * US_PER_S
    ).astype(np.int64)

    n_events = n_views + np.bincount(sess_of_view, weights=cart.astype(np.int64) + buy, minlength=n).astype(np.int64)
    return dict(
        t0=t0, user=user, anonymous=anonymous, city=city, device=device, n_views=n_views,
        sess_of_view=sess_of_view, item=item, cart=cart, buy=buy, quantity=quantity,
        view_t=view_t, cart_t=cart_t, checkout=checkout, n_events=n_events,
    )


def _assemble(world: _World, s: dict, kept: np.ndarray, n_keep: np.ndarray, d: int, b: int) -> pa.Table:
    # Keep the chosen sessions (still in start order) and their views.
    view_kept = kept[s["sess_of_view"]]
    new_index = np.cumsum(kept) - 1
    sess = new_index[s["sess_of_view"][view_kept]]
    n_sess = int(kept.sum())
    item, cart, buy = s["item"][view_kept], s["cart"][view_kept], s["buy"][view_kept]
    quantity, view_t, cart_t = s["quantity"][view_kept], s["view_t"][view_kept], s["cart_t"][view_kept]
    checkout = s["checkout"][kept]

    # Layout per session: its views (each followed by its cart, if any), then its purchases.
    per_view = 1 + cart.astype(np.int64)
    vc_view = np.repeat(np.arange(len(item)), per_view)
    vc_first = np.cumsum(per_view) - per_view
    vc_type = np.zeros(len(vc_view), dtype=np.int8)
    vc_type[vc_first[cart] + 1] = 1
    p_view = np.flatnonzero(buy)
    n_vc = np.bincount(sess, weights=per_view, minlength=n_sess).astype(np.int64)
    n_p = np.bincount(sess[p_view], minlength=n_sess).astype(np.int64)
    p_before = np.cumsum(n_p) - n_p
    vc_incl = np.cumsum(n_vc)
    total = int(vc_incl[-1] + p_before[-1] + n_p[-1]) if n_sess else 0

    ev_view = np.empty(total, dtype=np.int64)
    ev_type = np.empty(total, dtype=np.int8)
    ev_t = np.empty(total, dtype=np.int64)
    pos_vc = np.arange(len(vc_view)) + p_before[sess[vc_view]]
    ev_view[pos_vc] = vc_view
    ev_type[pos_vc] = vc_type
    ev_t[pos_vc] = np.where(vc_type == 1, cart_t[vc_view], view_t[vc_view])
    p_sess = sess[p_view]
    pos_p = np.arange(len(p_view)) + vc_incl[p_sess]
    rank_p = np.arange(len(p_view)) - p_before[p_sess]
    ev_view[pos_p] = p_view
    ev_type[pos_p] = 2
    ev_t[pos_p] = checkout[p_sess] + rank_p * US_PER_S

    # Truncate the one session that was cut: keep the first n_keep events of every session.
    ev_sess = sess[ev_view]
    sess_first = np.cumsum(n_vc + n_p) - (n_vc + n_p)
    keep = (np.arange(total) - sess_first[ev_sess]) < n_keep[ev_sess]
    ev_view, ev_type, ev_t, ev_sess = ev_view[keep], ev_type[keep], ev_t[keep], ev_sess[keep]
    n = len(ev_view)

    user = s["user"][kept]
    anonymous = s["anonymous"][kept]
    user_idx = pa.array(user[ev_sess], mask=anonymous[ev_sess])
    session_ids = _fixed_width_ids("s", (d * 1000 + b) * 1_000_000 + np.arange(n_sess), 14)
    city = s["city"][kept]
    temp = world.weather.temp_c[city, d]
    ctx = np.stack(
        [
            s["device"][kept].astype(np.int64),
            world.o_city + city,
            world.o_weather + world.weather.label[city, d].astype(np.int64),
            world.o_temp + np.clip(np.round(temp * 10).astype(np.int64) - world.temp_lo, 0, 900),
        ],
        axis=1,
    )
    context = _flat_map(("device", "location", "weather", "temp_c"), world.context_vocab, ctx[ev_sess])
    value = np.where(ev_type == 0, np.float32(1.0), quantity[ev_view])
    return pa.Table.from_arrays(
        [
            pc.take(world.users.user_ids, user_idx),
            pc.take(world.catalog.item_ids, pa.array(item[ev_view])),
            pc.take(world.event_type_vocab, pa.array(ev_type)),
            pa.array(ev_t, TIMESTAMP),
            pa.array(value, pa.float32()),
            pc.take(session_ids, pa.array(ev_sess)),
            pa.nulls(n, pa.string()),
            context,
        ],
        schema=EVENT_SCHEMA,
    )


def event_chunks(
    catalog: Catalog,
    users: Users,
    *,
    n_events: int,
    seed: int,
    chunk_events: int = 1_000_000,
) -> Iterator[pa.Table]:
    """Yield exactly ``n_events`` events in EVENT_SCHEMA, in tables of ``chunk_events`` rows (the
    last one shorter), in time order: each chunk is a consecutive slice of the period, so it
    touches one or two day partitions. The period is the catalogue's (``start``, ``days``).

    The rows do not depend on ``chunk_events``; memory is about ``chunk_events + BLOCK_EVENTS`` rows.
    """
    _check_int("n_events", n_events, 0)
    _check_int("chunk_events", chunk_events, 1)
    _check_int("seed", seed, 0)
    world = _World(catalog, users, seed)
    per_day = day_event_counts(n_events, seed=seed, days=world.days, start=world.start)
    if int(per_day.max(initial=0)) > BLOCK_EVENTS * 999:
        raise ValidationError(
            f"{int(per_day.max())} events on one day is more than this generator supports "
            f"({BLOCK_EVENTS * 999}); spread them over more --days"
        )
    buffer: list[pa.Table] = []
    buffered = 0
    for d in range(world.days):
        n_d = int(per_day[d])
        if n_d == 0:
            continue
        n_blocks = -(-n_d // BLOCK_EVENTS)
        sizes = np.full(n_blocks, n_d // n_blocks)
        sizes[: n_d % n_blocks] += 1
        for b in range(n_blocks):
            buffer.append(_block(world, d, b, n_blocks, int(sizes[b])))
            buffered += int(sizes[b])
            while buffered >= chunk_events:
                table = pa.concat_tables(buffer)
                rest = table.slice(chunk_events)
                head = table.slice(0, chunk_events)
                # Drop our references before yielding, so only the yielded chunk and the rest
                # of the last block stay alive while the consumer works on it.
                del table
                buffer, buffered = ([rest] if rest.num_rows else []), rest.num_rows
                yield head
                del head
    if buffered:
        yield pa.concat_tables(buffer)


# ---------------------------------------------------------------------------------------------
# Reviews


def _hash_uniform(*cols: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) per row from integer columns (splitmix64): the same row always draws the
    same number, however the events were chunked."""
    x = np.zeros(len(cols[0]), np.uint64)
    with np.errstate(over="ignore"):
        for c in cols:
            x = (x ^ c.astype(np.uint64)) + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def item_appeal(catalog: Catalog) -> np.ndarray:
    """float64 [n_items] in (0, 1): the hidden appeal (popularity percentile) reviews reflect."""
    order = np.argsort(np.argsort(catalog.popularity))
    return (order + 0.5) / catalog.n_items


def review_events(catalog: Catalog, chunk: pa.Table, *, seed: int, share: float) -> pa.Table:
    """``rating`` events (value = stars 1-5) for a deterministic ``share`` of the purchases in
    ``chunk``, 1-10 days after them and before the end of the period."""
    buy = pc.equal(chunk.column("event_type"), "purchase")
    p = chunk.filter(buy).filter(pc.is_valid(chunk.filter(buy).column("user_id")))
    ts = p.column("timestamp").cast(pa.int64()).to_numpy()
    item_idx = np.asarray(pc.index_in(p.column("item_id"), value_set=catalog.item_ids).to_numpy(zero_copy_only=False))
    u1 = _hash_uniform(ts, item_idx, np.full(len(ts), seed))
    u2 = _hash_uniform(ts, item_idx, np.full(len(ts), seed + 1))
    u3 = _hash_uniform(ts, item_idx, np.full(len(ts), seed + 2))
    t_review = ts + ((1.0 + 9.0 * u2) * US_PER_DAY).astype(np.int64)
    end_us = _start_us(catalog.start) + catalog.days * US_PER_DAY
    keep = (u1 < share) & (t_review < end_us)
    appeal = item_appeal(catalog)[item_idx[keep]]
    noise = ndtri_clip(u3[keep]) * 0.8
    stars = np.clip(np.round(1.8 + 3.0 * appeal + noise), 1, 5).astype(np.float32)
    rows = p.filter(pa.array(keep))
    n = rows.num_rows
    return pa.Table.from_arrays(
        [rows.column("user_id"), rows.column("item_id"), pa.array(["rating"] * n, pa.string()),
         pa.array(t_review[keep], TIMESTAMP), pa.array(stars, pa.float32()), rows.column("session_id"),
         pa.nulls(n, pa.string()), rows.column("context")],
        schema=EVENT_SCHEMA,
    )


def ndtri_clip(u: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri

    return ndtri(np.clip(u, 1e-6, 1 - 1e-6))


# ---------------------------------------------------------------------------------------------
# Into a store


@dataclass(frozen=True)
class SynthReport:
    """What ``generate_store`` wrote."""

    n_users: int
    n_items: int
    n_events: int
    event_counts: dict[str, int]
    seed: int
    start: datetime
    days: int
    first_event: datetime | None
    last_event: datetime | None
    elapsed_s: float
    #: seconds generating and writing the events alone (no catalogue/customers, no SQLite upserts)
    events_s: float = float("nan")

    @property
    def events_per_s(self) -> float:
        return self.n_events / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    @property
    def events_only_per_s(self) -> float:
        """Events per second of generating + writing the event log (comparable to the generator's rate)."""
        return self.n_events / self.events_s if self.events_s > 0 else float("nan")


def generate_store(
    store: "DataStore",
    *,
    n_users: int,
    n_items: int,
    n_events: int,
    seed: int,
    days: int = 180,
    start: date | datetime | str | None = None,
    chunk_events: int = 1_000_000,
    progress: Callable[[int, int], None] | None = None,
    reviews: float = 0.0,
) -> SynthReport:
    """Generate a shop into ``store``: ``n_events`` events through one event-log transaction,
    then the items and customers into the catalogue, inside that transaction, so an error or
    Ctrl-C leaves nothing in the log. ``progress(events_done, n_events)`` is called per chunk.
    ``reviews``: the share of purchases followed by a rating event (0: none; they come on top of
    ``n_events`` and are counted under "rating")."""
    if not 0.0 <= reviews <= 1.0:
        raise ValidationError(f"reviews must be a share between 0 and 1, got {reviews!r}")
    t_begin = time.perf_counter()
    catalog = make_catalog(n_items, seed=seed, days=days, start=start)
    users = make_users(n_users, seed=seed, days=days, start=start)
    counts = dict.fromkeys(EVENT_TYPES, 0)
    done = 0
    t_min: int | None = None
    t_max: int | None = None
    if progress is not None:
        progress(0, n_events)
    with store.log.transaction() as tx:
        t_events = time.perf_counter()
        for chunk in event_chunks(catalog, users, n_events=n_events, seed=seed, chunk_events=chunk_events):
            # Encoded and written on the transaction's background thread while the next chunk
            # is generated (the two take about the same CPU per event).
            tx.write_async(chunk)
            if reviews > 0:
                extra = review_events(catalog, chunk, seed=seed, share=reviews)
                if extra.num_rows:
                    tx.write_async(extra)
                    counts["rating"] = counts.get("rating", 0) + extra.num_rows
            vc = pc.value_counts(chunk.column("event_type"))
            for name, k in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
                counts[name] = counts.get(name, 0) + k
            mm = pc.min_max(chunk.column("timestamp").cast(pa.int64()))
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            t_min = lo if t_min is None else min(t_min, lo)
            t_max = hi if t_max is None else max(t_max, hi)
            done += chunk.num_rows
            if progress is not None:
                progress(done, n_events)
        tx.wait()
        events_s = time.perf_counter() - t_events
        # Inside the transaction: if the catalogue write fails, the events are not committed.
        store.catalog.upsert_items(catalog.to_table())
        store.catalog.upsert_users(users.to_table())

    def _dt(us: int | None) -> datetime | None:
        return None if us is None else datetime.fromtimestamp(us / US_PER_S, tz=timezone.utc)

    return SynthReport(
        n_users=n_users,
        n_items=n_items,
        n_events=done,
        event_counts=counts,
        seed=seed,
        start=catalog.start,
        days=days,
        first_event=_dt(t_min),
        last_event=_dt(t_max),
        elapsed_s=time.perf_counter() - t_begin,
        events_s=events_s,
    )


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValidationError(f"{name} must be an integer >= {minimum}, got {value!r}")

"""Caption grammar for the synthetic scenes of :mod:`clarion.synth.generate`.

A caption is generated in two steps. :func:`sample_plan` decides, independently of the
language, WHAT a caption says: which events it mentions (grouped in time order; a group of
two is a pair of overlapping events), which of their attributes it names, and whether it
states the temporal relation between groups. :func:`realise` then says it in one language
with hand-written templates and vocabulary: nouns with grammatical gender, verbs, adjectives
with agreement, German word order (main, inverted and subordinate clauses), French elision.
The same plan realised in every language gives parallel captions.

Every realised caption is true of its clip: a plan only mentions events that happen, with
their true attributes, and only connectives that hold ("then" between groups in time order,
"while" inside an overlapping pair, a plain "and" when the order is not stated).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LANGUAGES = ("en", "de", "fr", "es")
ATTRIBUTES = ("loudness", "duration", "pitch", "repetitions")
_ADJECTIVE_ATTRIBUTES = ("loudness", "duration", "pitch")
_NOUN_FORMS = ("nom", "acc", "dat", "bare")
_CLAUSE_FORMS = ("main", "inv", "sub")


@dataclass(frozen=True)
class Mention:
    """An event named in a caption: its index in the clip, its type and the attributes named."""

    event: int
    type: str
    attrs: tuple[tuple[str, str], ...]

    def get(self, attribute: str) -> str | None:
        return dict(self.attrs).get(attribute)


@dataclass(frozen=True)
class Plan:
    """What one caption says. ``groups`` are in time order; a group of two is an overlapping
    pair given as (background, foreground). ``ordered`` says whether the caption states the
    relation between groups (otherwise it lists the events joined by "and")."""

    groups: tuple[tuple[Mention, ...], ...]
    ordered: bool

    @property
    def mentions(self) -> tuple[Mention, ...]:
        return tuple(m for group in self.groups for m in group)

    def to_json(self) -> dict:
        return {
            "groups": [[m.event for m in group] for group in self.groups],
            "ordered": self.ordered,
            "attributes": {str(m.event): dict(m.attrs) for m in self.mentions},
        }


@dataclass(frozen=True)
class Noun:
    """A noun for a sound type. ``gender``: "m"/"f"/"n" (de, fr, es), or "count"/"mass" (en,
    where a mass noun takes no article). ``verbs``: third-person singular present forms that
    fit it as subject; German separable forms are written "finite|rest" ("ist|zu hören").
    ``adj``: German adjective stem built into the noun phrase ("aufsteigend" Zirpton).
    ``subject_only``: the noun names the source, not the sound ("dog"), so it is used only
    as the subject of its verbs ("a dog barks"), never alone ("followed by a dog") nor with
    a duration ("a long dog")."""

    text: str
    gender: str
    verbs: tuple[str, ...]
    adj: str = ""
    subject_only: bool = False


@dataclass(frozen=True)
class Adjective:
    """An adjective; ``fem`` is its feminine form (fr, es); ``pre`` puts it before the noun (fr)."""

    masc: str
    fem: str = ""
    pre: bool = False

    def form(self, gender: str) -> str:
        return self.fem if gender == "f" and self.fem else self.masc


def _nouns(gender: str, verbs: tuple[str, ...], *texts: str) -> list[Noun]:
    return [Noun(text, gender, verbs) for text in texts]


# ---------------------------------------------------------------------------- English
_EN_GEN = ("sounds", "is heard", "can be heard")
_EN_NOUNS: dict[str, list[Noun]] = {
    "tone": [
        *_nouns("count", _EN_GEN + ("plays",), "tone", "sine tone", "steady tone"),
        Noun("beep", "count", ("sounds", "is heard", "goes off")),
    ],
    "rising chirp": _nouns("count", _EN_GEN, "rising chirp", "upward sweep", "upsweep", "rising glide"),
    "falling chirp": _nouns("count", _EN_GEN, "falling chirp", "downward sweep", "downsweep", "falling glide"),
    "siren": [
        *_nouns("count", ("wails", "sounds", "blares", "howls", "is heard"), "siren", "alarm siren"),
        Noun("alarm", "count", ("goes off", "sounds", "blares")),
    ],
    "white noise": [
        Noun("white noise", "mass", ("hisses", "is heard", "sounds")),
        Noun("static", "mass", ("hisses", "is heard")),
        *_nouns("count", _EN_GEN, "hiss", "burst of static"),
    ],
    "pink noise": [
        Noun("pink noise", "mass", ("rushes", "is heard", "sounds")),
        *_nouns("count", _EN_GEN, "rushing noise", "muffled roar"),
    ],
    "rain": [
        *_nouns("mass", ("falls", "patters", "is heard"), "rain", "rainfall"),
        *_nouns("count", _EN_GEN, "crackle", "patter of rain"),
    ],
    "clicks": [
        *_nouns("mass", _EN_GEN, "clicking", "ticking"),
        Noun("series of clicks", "count", _EN_GEN),
    ],
    "buzz": [
        *_nouns("count", _EN_GEN, "buzz", "buzzing sound", "harsh drone"),
        Noun("buzzer", "count", ("buzzes", "sounds", "goes off")),
    ],
    "tremolo": [
        Noun("tremolo", "count", _EN_GEN),
        Noun("wavering note", "count", _EN_GEN + ("wavers",)),
        Noun("pulsing note", "count", _EN_GEN + ("pulses",)),
    ],
    "bell": [
        Noun("bell", "count", ("rings", "chimes", "tolls", "sounds")),
        Noun("chime", "count", ("rings", "sounds", "is heard")),
    ],
    "knock": _nouns("count", _EN_GEN, "knock", "thump", "thud", "knocking sound"),
    "whistle": [
        Noun("whistle", "count", ("blows", "sounds", "is heard")),
        *_nouns("count", _EN_GEN, "whistled note", "whistling sound"),
    ],
    "engine": [
        Noun("engine", "count", ("hums", "rumbles", "runs", "idles"), subject_only=True),
        Noun("motor", "count", ("hums", "runs", "whirs"), subject_only=True),
        Noun("idling engine", "count", ("rumbles", "hums", "is heard"), subject_only=True),
        Noun("engine hum", "count", _EN_GEN),
    ],
    "dog bark": [
        Noun("dog", "count", ("barks",), subject_only=True),
        *_nouns("count", _EN_GEN, "dog bark", "bark"),
        Noun("barking dog", "count", ("is heard", "can be heard"), subject_only=True),
    ],
    "wind": [
        *_nouns("mass", ("blows", "howls", "is heard"), "wind", "howling wind"),
        *_nouns("count", ("blows", "is heard"), "gust of wind", "whoosh of wind"),
    ],
}
_EN_ADJ = {
    "pitch": {"low": ["low", "low-pitched", "deep"], "high": ["high", "high-pitched", "shrill"]},
    "loudness": {"loud": ["loud"], "quiet": ["quiet", "faint", "soft"]},
    "duration": {"short": ["short", "brief"], "long": ["long", "prolonged", "sustained"]},
}
_EN_REPS = {
    "once": ["once", "just once"],
    "twice": ["twice", "two times"],
    "three times": ["three times"],
    "repeatedly": ["repeatedly", "several times", "again and again"],
}
_EN_TEMPLATES = {
    "single": (
        "{A.main}.",
        "You can hear {A.nom}{A.reps}.",
        "In this recording, {A.main}.",
        "The sound of {A.nom}.",
        "There is {A.nom} in the recording.",
    ),
    "pair_clause": (
        "{X.@} while {Y.sub}",
        "{X.@} at the same time as {Y.sub}",
        "{X.@} over {Y.nom}",
    ),
    "pair_sentence": (
        "{X.nom} and {Y.nom} are heard at the same time.",
        "{X.nom} over {Y.nom}.",
        "You can hear {X.nom} together with {Y.nom}.",
    ),
    "seq2": (
        "{A.main}, then {B.main}.",
        "{A.main}, and then {B.main}.",
        "First {A.main}, then {B.main}.",
        "{A.main}, followed by {B.nom}.",
        "{A.nom} followed by {B.nom}.",
        "After {A.nom}, {B.main}.",
        "{B.main} after {A.nom}.",
        "{A.main} before {B.main}.",
    ),
    "seq3": (
        "{A.main}, then {B.main}, and finally {C.main}.",
        "First {A.main}, then {B.main}, then {C.main}.",
        "{A.nom}, followed by {B.nom} and then {C.nom}.",
        "{A.main}, after that {B.main}, and finally {C.main}.",
    ),
    "unordered": (
        "You can hear {L.nom}.",
        "{L.main}.",
        "The recording contains {L.nom}.",
        "{L.nom} can be heard.",
    ),
}

# ---------------------------------------------------------------------------- German
_DE_GEN = ("ertönt", "erklingt", "ist|zu hören")
_DE_NOUNS: dict[str, list[Noun]] = {
    "tone": _nouns("m", _DE_GEN, "Ton", "Piepton", "Sinuston"),
    "rising chirp": [
        Noun("Zirpton", "m", _DE_GEN, adj="aufsteigend"),
        Noun("Glissando", "n", _DE_GEN, adj="steigend"),
        Noun("Aufwärtsglissando", "n", _DE_GEN),
    ],
    "falling chirp": [
        Noun("Zirpton", "m", _DE_GEN, adj="absteigend"),
        Noun("Glissando", "n", _DE_GEN, adj="fallend"),
        Noun("Abwärtsglissando", "n", _DE_GEN),
    ],
    "siren": [
        *_nouns("f", ("heult", "ertönt", "ist|zu hören"), "Sirene", "Alarmsirene"),
        Noun("Martinshorn", "n", ("ertönt", "ist|zu hören")),
    ],
    "white noise": [
        Noun("Rauschen", "n", _DE_GEN, adj="weiß"),
        *_nouns("n", _DE_GEN, "Zischen"),
        *_nouns("m", _DE_GEN, "Rauschstoß"),
    ],
    "pink noise": [
        Noun("Rauschen", "n", _DE_GEN, adj="rosa"),
        Noun("Rauschen", "n", _DE_GEN, adj="dumpf"),
        Noun("Brausen", "n", _DE_GEN),
    ],
    "rain": [
        Noun("Regen", "m", ("prasselt", "fällt", "ist|zu hören")),
        *_nouns("n", _DE_GEN, "Regenprasseln", "Knistern"),
    ],
    "clicks": [*_nouns("n", _DE_GEN, "Klicken", "Ticken"), Noun("Klickfolge", "f", _DE_GEN)],
    "buzz": [
        *_nouns("n", _DE_GEN, "Summen", "Surren", "Schnarren"),
        Noun("Summer", "m", ("summt", "ertönt", "ist|zu hören")),
    ],
    "tremolo": [
        Noun("Tremolo", "n", _DE_GEN),
        Noun("Ton", "m", _DE_GEN, adj="bebend"),
        Noun("Ton", "m", _DE_GEN, adj="pulsierend"),
    ],
    "bell": [
        Noun("Glocke", "f", ("läutet", "klingt", "ertönt")),
        *_nouns("m", _DE_GEN, "Glockenschlag", "Glockenton"),
    ],
    "knock": [
        *_nouns("n", _DE_GEN, "Klopfen", "Pochen", "Klopfgeräusch"),
        Noun("Schlag", "m", _DE_GEN, adj="dumpf"),
    ],
    "whistle": [*_nouns("m", _DE_GEN, "Pfiff", "Pfeifton"), Noun("Pfeifen", "n", _DE_GEN)],
    "engine": [
        Noun("Motor", "m", ("brummt", "läuft", "dröhnt"), subject_only=True),
        *_nouns("n", _DE_GEN, "Motorbrummen", "Motorengeräusch"),
    ],
    "dog bark": [Noun("Hund", "m", ("bellt",), subject_only=True), *_nouns("n", _DE_GEN, "Hundebellen", "Bellen")],
    "wind": [
        Noun("Wind", "m", ("weht", "heult", "rauscht")),
        Noun("Windstoß", "m", _DE_GEN),
        Noun("Windrauschen", "n", _DE_GEN),
    ],
}
# Adjective stems: the ending is added by case and gender ("hoh" + "er" = "hoher").
_DE_ADJ = {
    "pitch": {"low": ["tief"], "high": ["hoh", "hell", "schrill"]},
    "loudness": {"loud": ["laut", "kräftig"], "quiet": ["leis", "schwach"]},
    "duration": {"short": ["kurz"], "long": ["lang", "langgezogen", "anhaltend"]},
}
_DE_INDECLINABLE = {"rosa"}
_DE_ARTICLE = {
    "nom": {"m": "ein", "f": "eine", "n": "ein"},
    "acc": {"m": "einen", "f": "eine", "n": "ein"},
    "dat": {"m": "einem", "f": "einer", "n": "einem"},
}
_DE_ENDING = {
    "nom": {"m": "er", "f": "e", "n": "es"},
    "acc": {"m": "en", "f": "e", "n": "es"},
    "dat": {"m": "en", "f": "en", "n": "en"},
}
_DE_REPS = {
    "once": ["einmal", "nur einmal"],
    "twice": ["zweimal"],
    "three times": ["dreimal"],
    "repeatedly": ["wiederholt", "mehrmals", "immer wieder"],
}
_DE_TEMPLATES = {
    "single": (
        "{A.main}.",
        "Man hört {A.acc}{A.reps}.",
        "In der Aufnahme {A.inv}.",
        "Zu hören ist {A.nom}.",
        "Die Aufnahme enthält {A.acc}.",
    ),
    "pair_clause": (
        "{X.@}, während {Y.sub}",
        "{X.@} und gleichzeitig {Y.inv}",
        "{X.@}, und zur selben Zeit {Y.inv}",
    ),
    "pair_sentence": (
        "{X.nom} und {Y.nom} sind gleichzeitig zu hören.",
        "{X.nom} über {Y.dat}.",
        "Man hört {X.acc} zusammen mit {Y.dat}.",
    ),
    "seq2": (
        "{A.main}, dann {B.inv}.",
        "Zuerst {A.inv}, danach {B.inv}.",
        "{A.main}, anschließend {B.inv}.",
        "{A.nom}, gefolgt von {B.dat}.",
        "Nach {A.dat} {B.inv}.",
        "Auf {A.acc} folgt {B.nom}.",
    ),
    "seq3": (
        "Zuerst {A.inv}, dann {B.inv} und schließlich {C.inv}.",
        "{A.main}, dann {B.inv}, danach {C.inv}.",
        "{A.nom}, gefolgt von {B.dat} und dann von {C.dat}.",
    ),
    "unordered": (
        "Man hört {L.acc}.",
        "{L.main}.",
        "Die Aufnahme enthält {L.acc}.",
        "Zu hören sind {L.nom}.",
    ),
}

# ---------------------------------------------------------------------------- French
_FR_GEN = ("retentit", "se fait entendre", "résonne")
_FR_NOUNS: dict[str, list[Noun]] = {
    "tone": [*_nouns("m", _FR_GEN, "son pur", "bip", "son continu"), Noun("tonalité", "f", _FR_GEN)],
    "rising chirp": _nouns("m", _FR_GEN, "glissando montant", "balayage ascendant", "glissement ascendant"),
    "falling chirp": _nouns("m", _FR_GEN, "glissando descendant", "balayage descendant", "glissement descendant"),
    "siren": [
        *_nouns("f", ("hurle", "retentit", "sonne"), "sirène", "sirène d'alarme"),
        Noun("alarme", "f", ("retentit", "sonne")),
    ],
    "white noise": _nouns("m", _FR_GEN, "bruit blanc", "souffle", "chuintement"),
    "pink noise": _nouns("m", _FR_GEN, "bruit rose", "grondement sourd", "bruissement"),
    "rain": [
        *_nouns("f", ("tombe", "crépite", "se fait entendre"), "pluie", "averse"),
        Noun("crépitement", "m", _FR_GEN),
    ],
    "clicks": _nouns("m", _FR_GEN, "cliquetis", "tic-tac", "claquement régulier"),
    "buzz": [
        *_nouns("m", _FR_GEN, "bourdonnement", "grésillement"),
        Noun("buzzer", "m", ("sonne", "retentit")),
    ],
    "tremolo": _nouns("m", _FR_GEN, "trémolo", "son tremblant", "son pulsé"),
    "bell": [
        Noun("cloche", "f", ("sonne", "tinte", "retentit")),
        Noun("carillon", "m", ("sonne", "retentit")),
        Noun("tintement", "m", _FR_GEN),
    ],
    "knock": _nouns("m", _FR_GEN, "coup", "coup sourd", "choc"),
    "whistle": [
        *_nouns("m", _FR_GEN, "sifflement", "coup de sifflet"),
        Noun("sifflet", "m", ("retentit", "siffle")),
    ],
    "engine": [
        Noun("moteur", "m", ("tourne", "ronronne", "gronde"), subject_only=True),
        *_nouns("m", _FR_GEN, "ronronnement de moteur", "bruit de moteur"),
    ],
    "dog bark": [Noun("chien", "m", ("aboie",), subject_only=True), *_nouns("m", _FR_GEN, "aboiement", "jappement")],
    "wind": [
        Noun("vent", "m", ("souffle", "siffle", "hurle")),
        *_nouns("f", ("souffle", "se fait entendre"), "rafale de vent", "bourrasque"),
    ],
}
_FR_ADJ = {
    "pitch": {
        "low": [Adjective("grave")],
        "high": [Adjective("aigu", "aiguë"), Adjective("perçant", "perçante")],
    },
    "loudness": {
        "loud": [Adjective("fort", "forte"), Adjective("puissant", "puissante")],
        "quiet": [Adjective("faible"), Adjective("doux", "douce")],
    },
    "duration": {
        "short": [Adjective("bref", "brève", pre=True), Adjective("court", "courte")],
        "long": [Adjective("long", "longue", pre=True), Adjective("prolongé", "prolongée")],
    },
}
_FR_REPS = {
    "once": ["une fois", "une seule fois"],
    "twice": ["deux fois"],
    "three times": ["trois fois"],
    "repeatedly": ["plusieurs fois", "à plusieurs reprises", "encore et encore"],
}
_FR_TEMPLATES = {
    "single": (
        "{A.main}.",
        "On entend {A.nom}{A.reps}.",
        "Dans cet enregistrement, {A.main}.",
        "Il y a {A.nom}.",
        "On perçoit {A.nom}{A.reps}.",
    ),
    "pair_clause": (
        "{X.@} pendant que {Y.sub}",
        "{X.@} en même temps que {Y.nom}",
        "{X.@}, tandis que {Y.sub}",
    ),
    "pair_sentence": (
        "{X.nom} et {Y.nom} retentissent en même temps.",
        "{X.nom} sur fond de {Y.bare}.",
        "On entend {X.nom} en même temps que {Y.nom}.",
    ),
    "seq2": (
        "{A.main}, puis {B.main}.",
        "D'abord {A.main}, ensuite {B.main}.",
        "{A.nom}, suivi{A.e} de {B.nom}.",
        "Après {A.nom}, {B.main}.",
        "{A.main}, et ensuite {B.main}.",
    ),
    "seq3": (
        "D'abord {A.main}, puis {B.main}, et enfin {C.main}.",
        "{A.main}, puis {B.main}, ensuite {C.main}.",
        "{A.nom}, puis {B.nom} et enfin {C.nom}.",
    ),
    "unordered": ("On entend {L.nom}.", "{L.main}.", "L'enregistrement contient {L.nom}."),
}

# ---------------------------------------------------------------------------- Spanish
_ES_GEN = ("suena", "se oye", "resuena")
_ES_NOUNS: dict[str, list[Noun]] = {
    "tone": _nouns("m", _ES_GEN, "tono", "pitido", "tono puro"),
    "rising chirp": _nouns("m", _ES_GEN, "barrido ascendente", "glissando ascendente", "chirrido ascendente"),
    "falling chirp": _nouns("m", _ES_GEN, "barrido descendente", "glissando descendente", "chirrido descendente"),
    "siren": [
        Noun("sirena", "f", ("suena", "aúlla", "se oye")),
        Noun("alarma", "f", ("suena", "se oye")),
    ],
    "white noise": _nouns("m", _ES_GEN, "ruido blanco", "siseo"),
    "pink noise": _nouns("m", _ES_GEN, "ruido rosa", "rumor sordo"),
    "rain": [
        Noun("lluvia", "f", ("cae", "suena", "se oye")),
        *_nouns("m", _ES_GEN, "repiqueteo de lluvia", "crepitar"),
    ],
    "clicks": _nouns("m", _ES_GEN, "tictac", "chasquido repetido", "traqueteo"),
    "buzz": [
        *_nouns("m", _ES_GEN, "zumbido", "sonido zumbante"),
        Noun("zumbador", "m", ("suena", "se oye")),
    ],
    "tremolo": _nouns("m", _ES_GEN, "trémolo", "tono tembloroso", "tono pulsante"),
    "bell": [
        Noun("campana", "f", ("suena", "repica", "tañe")),
        Noun("campanada", "f", _ES_GEN),
        Noun("tintineo", "m", _ES_GEN),
    ],
    "knock": _nouns("m", _ES_GEN, "golpe", "golpe sordo", "golpeteo"),
    "whistle": [Noun("silbido", "m", _ES_GEN), Noun("silbato", "m", ("suena", "se oye"))],
    "engine": [
        Noun("motor", "m", ("ruge", "zumba", "funciona"), subject_only=True),
        *_nouns("m", _ES_GEN, "ronroneo de motor", "ruido de motor"),
    ],
    "dog bark": [Noun("perro", "m", ("ladra",), subject_only=True), Noun("ladrido", "m", _ES_GEN)],
    "wind": [
        Noun("viento", "m", ("sopla", "silba", "aúlla")),
        Noun("ráfaga de viento", "f", ("sopla", "se oye")),
    ],
}
_ES_ADJ = {
    "pitch": {"low": [Adjective("grave")], "high": [Adjective("agudo", "aguda")]},
    "loudness": {
        "loud": [Adjective("fuerte"), Adjective("intenso", "intensa")],
        "quiet": [Adjective("suave"), Adjective("débil"), Adjective("tenue")],
    },
    "duration": {
        "short": [Adjective("corto", "corta"), Adjective("breve")],
        "long": [Adjective("largo", "larga"), Adjective("prolongado", "prolongada")],
    },
}
_ES_REPS = {
    "once": ["una vez", "una sola vez"],
    "twice": ["dos veces"],
    "three times": ["tres veces"],
    "repeatedly": ["repetidamente", "varias veces", "una y otra vez"],
}
_ES_TEMPLATES = {
    "single": (
        "{A.main}.",
        "Se oye {A.nom}{A.reps}.",
        "En esta grabación, {A.main}.",
        "Hay {A.nom}.",
        "Se escucha {A.nom}{A.reps}.",
    ),
    "pair_clause": ("{X.@} mientras {Y.sub}", "{X.@} al mismo tiempo que {Y.sub}"),
    "pair_sentence": (
        "{X.nom} y {Y.nom} suenan a la vez.",
        "{X.nom} con {Y.nom} de fondo.",
        "Se oyen a la vez {X.nom} y {Y.nom}.",
    ),
    "seq2": (
        "{A.main}, luego {B.main}.",
        "Primero {A.main} y después {B.main}.",
        "{A.nom}, seguid{A.o} de {B.nom}.",
        "Tras {A.nom}, {B.main}.",
        "Después de {A.nom}, {B.main}.",
        "{B.main} después de {A.nom}.",
    ),
    "seq3": (
        "Primero {A.main}, luego {B.main} y finalmente {C.main}.",
        "{A.main}, después {B.main} y por último {C.main}.",
        "{A.nom}, seguid{A.o} de {B.nom} y luego de {C.nom}.",
    ),
    "unordered": ("Se oyen {L.nom}.", "{L.main}.", "La grabación contiene {L.nom}.", "Hay {L.nom}."),
}


# ---------------------------------------------------------------------------- realisers
class _Realiser:
    """Turns mentions into noun phrases and clauses of one language; subclasses hold the
    morphology, the class attributes the vocabulary and templates."""

    nouns: dict[str, list[Noun]]
    adjectives: dict
    reps: dict[str, list[str]]
    templates: dict[str, tuple[str, ...]]
    conjunction: str

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self._nouns: dict[int, Noun] = {}

    def pick(self, options: Sequence):
        return options[self.rng.integers(len(options))]

    def noun(self, m: Mention, subject: bool = False) -> Noun:
        """The noun for ``m``, chosen at its first use in a caption (as the subject of a
        clause if ``subject``) and kept for the rest of the caption."""
        if m.event not in self._nouns:
            source_ok = subject and m.get("duration") is None
            self._nouns[m.event] = self.pick([n for n in self.nouns[m.type] if source_ok or not n.subject_only])
        return self._nouns[m.event]

    def adjective_values(self, m: Mention) -> list:
        return [self.pick(self.adjectives[a][v]) for a, v in m.attrs if a in _ADJECTIVE_ATTRIBUTES]

    def reps_phrase(self, m: Mention) -> str:
        value = m.get("repetitions")
        return f" {self.pick(self.reps[value])}" if value else ""

    def join(self, items: Sequence[str]) -> str:
        if len(items) == 1:
            return items[0]
        return f"{', '.join(items[:-1])} {self.conjunction} {items[-1]}"

    def noun_phrase(self, m: Mention, case: str) -> str:
        raise NotImplementedError

    def clause(self, m: Mention, form: str) -> str:
        verb = self.pick(self.noun(m, subject=True).verbs)
        return f"{self.noun_phrase(m, 'nom')} {verb}{self.reps_phrase(m)}"

    def agreement(self, m: Mention, form: str) -> str:
        feminine = self.noun(m).gender == "f"
        return {"e": "e" if feminine else "", "o": "a" if feminine else "o"}[form]

    def finish(self, text: str) -> str:
        text = re.sub(r"\s+", " ", text).strip()
        return text[0].upper() + text[1:]


class _English(_Realiser):
    nouns, adjectives, reps, templates = _EN_NOUNS, _EN_ADJ, _EN_REPS, _EN_TEMPLATES
    conjunction = "and"

    def noun_phrase(self, m: Mention, case: str) -> str:
        noun = self.noun(m)
        words = " ".join([*self.adjective_values(m), noun.text])
        if noun.gender == "mass":
            return words
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


class _German(_Realiser):
    nouns, adjectives, reps, templates = _DE_NOUNS, _DE_ADJ, _DE_REPS, _DE_TEMPLATES
    conjunction = "und"

    @staticmethod
    def bare(noun: Noun, case: str = "nom", adjectives: Sequence[str] = ()) -> str:
        """``noun`` declined in ``case`` after "ein", with attribute adjective stems first."""
        ending = _DE_ENDING[case][noun.gender]
        built_in = noun.adj
        if noun.adj and noun.adj not in _DE_INDECLINABLE:
            built_in += ending
        words = [", ".join(stem + ending for stem in adjectives), built_in, noun.text]
        return " ".join(filter(None, words))

    def noun_phrase(self, m: Mention, case: str) -> str:
        noun = self.noun(m)
        return f"{_DE_ARTICLE[case][noun.gender]} {self.bare(noun, case, self.adjective_values(m))}"

    def clause(self, m: Mention, form: str) -> str:
        finite, _, rest = self.pick(self.noun(m, subject=True).verbs).partition("|")
        subject = self.noun_phrase(m, "nom")
        tail = f"{self.reps_phrase(m)} {rest}".rstrip()
        if form == "inv":
            return f"{finite} {subject}{tail}"
        if form == "sub":
            return f"{subject}{tail} {finite}"
        return f"{subject} {finite}{tail}"


class _Romance(_Realiser):
    """French and Spanish: articles by gender, adjectives after the noun joined by the
    conjunction, except French pre-nominal ones (bref, long)."""

    articles: dict[str, str]

    def noun_phrase(self, m: Mention, case: str) -> str:
        noun = self.noun(m)
        adjectives = self.adjective_values(m)
        before = [a.form(noun.gender) for a in adjectives if a.pre]
        after = [a.form(noun.gender) for a in adjectives if not a.pre]
        words = [*before, noun.text] + ([self.join(after)] if after else [])
        article = [] if case == "bare" else [self.articles[noun.gender]]
        return " ".join(article + words)


class _French(_Romance):
    nouns, adjectives, reps, templates = _FR_NOUNS, _FR_ADJ, _FR_REPS, _FR_TEMPLATES
    conjunction = "et"
    articles = {"m": "un", "f": "une"}

    def finish(self, text: str) -> str:
        elided = re.sub(r"\b(qu|d)e (?=[aeiouéèêâîôœ])", r"\1'", text)
        return super().finish(elided)


class _Spanish(_Romance):
    nouns, adjectives, reps, templates = _ES_NOUNS, _ES_ADJ, _ES_REPS, _ES_TEMPLATES
    conjunction = "y"
    articles = {"m": "un", "f": "una"}

    def finish(self, text: str) -> str:
        return super().finish(re.sub(r"\by (?=h?i[^aeiouáéó])", "e ", text))


_REALISERS: dict[str, type[_Realiser]] = {"en": _English, "de": _German, "fr": _French, "es": _Spanish}
_PLACEHOLDER = re.compile(r"\{([ABCLXY])\.(\w+|@)\}")


def type_terms(lang: str, name: str) -> tuple[str, ...]:
    """The nouns that name sound type ``name`` in language ``lang`` (German ones with their
    built-in adjective in the nominative: "aufsteigender Zirpton")."""
    return tuple(_German.bare(noun) if lang == "de" else noun.text for noun in _REALISERS[lang].nouns[name])


# ---------------------------------------------------------------------------- plans
def sample_plan(
    rng: np.random.Generator,
    events: Sequence[Mapping[str, str | None]],
    slots: Sequence[Sequence[int]],
    main: int,
    *,
    complete: bool,
    attribute_rate: float,
    event_dropout: float,
    relation_rate: float,
) -> Plan:
    """What one caption of a clip says. ``events`` hold each event's "type" and attribute
    values, ``slots`` the indices of events in time order (two per overlapping pair, the
    background first), ``main`` the event that is always mentioned. Each other event is
    dropped with probability ``event_dropout``, each applicable attribute named with
    probability ``attribute_rate``, the order stated with probability ``relation_rate``; a
    ``complete`` plan mentions every event and states the order."""
    kept = {i for i in range(len(events)) if complete or i == main or rng.random() >= event_dropout}
    groups = tuple(
        tuple(_mention(rng, i, events[i], attribute_rate) for i in slot if i in kept) for slot in slots
    )
    groups = tuple(group for group in groups if group)
    ordered = complete or sum(map(len, groups)) == 1 or rng.random() < relation_rate
    return Plan(groups, ordered)


def _mention(rng: np.random.Generator, index: int, event: Mapping[str, str | None], rate: float) -> Mention:
    attrs = tuple(
        (attribute, event[attribute])
        for attribute in ATTRIBUTES
        if _applicable(attribute, event) and rng.random() < rate
    )
    return Mention(index, event["type"], attrs)


def _applicable(attribute: str, event: Mapping[str, str | None]) -> bool:
    """Pitch only for pitched events; duration only for events that occur once."""
    if attribute == "duration":
        return event["repetitions"] == "once"
    return event[attribute] is not None


# ---------------------------------------------------------------------------- realisation
def realise(plan: Plan, lang: str, rng: np.random.Generator) -> str:
    """One caption in language ``lang`` saying what ``plan`` says."""
    speaker = _REALISERS[lang](rng)
    mentions = plan.mentions
    if len(mentions) > 1 and not plan.ordered:
        order = rng.permutation(len(mentions))
        candidates = [(t, {"L": [mentions[i] for i in order]}) for t in speaker.templates["unordered"]]
    elif len(plan.groups) == 1:
        (group,) = plan.groups
        candidates = [(t, {"A": group}) for t in speaker.templates["single"]]
        if len(group) == 2:
            background, foreground = group
            candidates += [(t, {"X": (foreground,), "Y": (background,)}) for t in speaker.templates["pair_sentence"]]
    else:
        key = "seq2" if len(plan.groups) == 2 else "seq3"
        candidates = [(t, dict(zip("ABC", plan.groups))) for t in speaker.templates[key]]
    usable = [(t, b) for t, b in candidates if _usable(t, b)]
    template, bindings = usable[rng.integers(len(usable))]
    return speaker.finish(_fill(speaker, template, bindings, "main"))


def _usable(template: str, bindings: Mapping[str, Sequence[Mention]]) -> bool:
    """Whether ``template`` can say everything about ``bindings``: a noun phrase cannot
    carry a pair (only clauses can) nor a repetition count (unless the template places the
    count with ``{A.reps}``)."""
    slots = _PLACEHOLDER.findall(template)
    with_reps = {letter for letter, form in slots if form == "reps"}
    for letter, form in slots:
        group = bindings[letter]
        if form in _CLAUSE_FORMS or form == "@":
            continue
        if letter != "L" and len(group) != 1:
            return False
        if form in _NOUN_FORMS and letter not in with_reps and any(m.get("repetitions") for m in group):
            return False
    return True


def _fill(speaker: _Realiser, template: str, bindings: Mapping[str, Sequence[Mention]], at: str) -> str:
    """``template`` with every placeholder replaced; ``{X.@}`` takes the form ``at``."""

    def replace(match: re.Match) -> str:
        letter, form = match.group(1), match.group(2)
        form = at if form == "@" else form
        group = bindings[letter]
        if letter == "L":
            if form in _CLAUSE_FORMS:
                return speaker.join([speaker.clause(m, form) for m in group])
            return speaker.join([speaker.noun_phrase(m, form) for m in group])
        if len(group) == 2:
            background, foreground = group
            pair = [t for t in speaker.templates["pair_clause"] if _usable(t, {"X": (foreground,), "Y": (background,)})]
            return _fill(speaker, speaker.pick(pair), {"X": (foreground,), "Y": (background,)}, form)
        (m,) = group
        if form in _CLAUSE_FORMS:
            return speaker.clause(m, form)
        if form == "reps":
            return speaker.reps_phrase(m)
        if form in _NOUN_FORMS:
            return speaker.noun_phrase(m, form)
        return speaker.agreement(m, form)

    return _PLACEHOLDER.sub(replace, template)


def caption_clip(
    events: Sequence[Mapping[str, str | None]],
    slots: Sequence[Sequence[int]],
    main: int,
    plan_rng: np.random.Generator,
    lang_rngs: Mapping[str, np.random.Generator],
    *,
    n_captions: int = 5,
    attribute_rate: float = 0.5,
    event_dropout: float = 0.25,
    relation_rate: float = 0.8,
) -> tuple[dict[str, list[str]], list[Plan]]:
    """``n_captions`` distinct captions per language of ``lang_rngs``, parallel across
    languages (caption k of every language realises plan k), and the plans. Caption 0 is
    complete (every event, order stated); the others follow the rates of
    :func:`sample_plan`. Plans are kept distinct from each other while that is easy."""
    captions: dict[str, list[str]] = {lang: [] for lang in lang_rngs}
    plans: list[Plan] = []
    for k in range(n_captions):
        for attempt in range(200):
            plan = sample_plan(
                plan_rng,
                events,
                slots,
                main,
                complete=k == 0,
                attribute_rate=attribute_rate,
                event_dropout=event_dropout,
                relation_rate=relation_rate,
            )
            if plan in plans and attempt < 20:
                continue
            texts = {lang: realise(plan, lang, rng) for lang, rng in lang_rngs.items()}
            if all(text not in captions[lang] for lang, text in texts.items()):
                break
        else:
            raise RuntimeError(f"no {k + 1}th distinct caption for events {events}")
        plans.append(plan)
        for lang, text in texts.items():
            captions[lang].append(text)
    return captions, plans

"""Seeded synthetic persons and their records across four feeds, for the MPI quality bench.

Every name, number and address is invented: given names and surnames from short lists below,
phones (NPA) 555-01xx, national ids 9xx-xx-xxxx (never issued as SSNs), e-mails at example.com/
.org/.net, identifier systems under urn:hub:. Persons come in households so that the hard
negatives are realistic: twins, Jr/Sr (parent and child with the same name), spouses, and
groups of persons with a common name in one city. Each record then passes through the error
processes in `ERROR_RATES` (per record unless said otherwise).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from hub.model import Address, ContactPoint, HumanName, Identifier, Patient

# Probabilities per record (or per person where noted). Printed in the bench report.
ERROR_RATES: dict[str, float] = {
    "given_typo": 0.04,  # one character substituted, dropped, doubled or two swapped
    "family_typo": 0.04,
    "nickname": 0.08,  # given name replaced by a nickname (0.20 in the CLINIC feed)
    "given_family_swap": 0.01,
    "dob_day_month_swap": 0.015,  # only when the day is ≤ 12
    "dob_year_off": 0.01,  # ±1 year
    "dob_component_off": 0.01,  # day or month mistyped
    "dob_partial": 0.02,  # year only or year-month
    "moved": 0.10,  # record carries a different (new) address and postal code; half also a new phone
    "maiden_name": 0.35,  # per record, for persons who changed surname at marriage (20 % of married women)
    "hyphen_part_only": 0.35,  # per record, for persons with a hyphenated surname (5 % of persons)
    "placeholder": 0.01,  # per field: UNKNOWN / BABY GIRL, 1900-01-01, 999-99-9999, 000-000-0000
    "national_id_typo": 0.02,  # one digit substituted or two adjacent digits swapped
    "phone_typo": 0.01,  # one of the last two digits substituted, or the two swapped
    "generation_suffix_shown": 0.5,  # per record, for Jr/Sr persons: JR/SR written in the name
}
# Which fields each feed carries (probability present) — missing values are the commonest error.
FEEDS: dict[str, dict[str, float]] = {
    "ADT": {"nid": 0.70, "phone": 0.90, "email": 0.35, "address": 0.95, "gender": 0.98},
    "LAB": {"nid": 0.10, "phone": 0.50, "email": 0.05, "address": 0.30, "gender": 0.95},
    "BILLING": {
        "nid": 0.85,
        "phone": 0.80,
        "email": 0.30,
        "address": 0.98,
        "gender": 0.90,
    },
    "CLINIC": {
        "nid": 0.30,
        "phone": 0.95,
        "email": 0.70,
        "address": 0.80,
        "gender": 0.97,
    },
}
HOUSEHOLDS = {
    "single": 0.56,
    "spouses": 0.16,
    "twins": 0.05,
    "jr_sr": 0.05,
    "common_name_group": 0.04,
    "family3": 0.14,
}
"""Share of persons by the household they are generated in (family3: parent couple + child)."""

# fmt: off
MALE = """James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel Matthew
Anthony Donald Steven Andrew Joshua Kenneth Kevin Brian George Edward Ronald Timothy Jason Jeffrey
Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin Scott Brandon Benjamin Samuel Gregory
Frank Alexander Raymond Patrick Jack Dennis Jerry Tyler Aaron Jose Adam Henry Nathan Douglas Zachary
Peter Kyle Walter Ethan Jeremy Harold Keith Christian Roger Noah Gerald Carl Terry Sean Austin
Arthur Lawrence Jesse Dylan Bryan Joe Jordan Billy Bruce Albert Willie Gabriel Logan Alan Juan Wayne
Roy Ralph Randy Eugene Vincent Russell Elijah Louis Bobby Philip Johnny Thaddeus Oswin Leopold Cyrus
Ignatius""".split()  # noqa: SIM905
FEMALE = """Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa Betty Margaret
Sandra Ashley Kimberly Emily Donna Michelle Dorothy Carol Amanda Melissa Deborah Stephanie Rebecca
Sharon Laura Cynthia Kathleen Amy Shirley Angela Helen Anna Brenda Pamela Nicole Emma Samantha
Katherine Christine Debra Rachel Catherine Carolyn Janet Ruth Maria Heather Diane Virginia Julie
Joyce Victoria Olivia Kelly Christina Lauren Joan Evelyn Judith Megan Cheryl Andrea Hannah Martha
Jacqueline Frances Gloria Ann Teresa Kathryn Sara Janice Jean Alice Madison Doris Abigail Julia Judy
Grace Denise Amber Marilyn Beverly Danielle Theresa Sophia Marie Diana Brittany Natalie Isabella
Charlotte Rose Alexis Kayla Renée Zoë Perpetua Ottilie Marisol Henrietta""".split()  # noqa: SIM905
NICK = {
    "James": ["Jim", "Jimmy"], "John": ["Jack", "Johnny"], "Robert": ["Bob", "Rob", "Bobby"], "Michael":
    ["Mike"], "William": ["Bill", "Will", "Billy"], "David": ["Dave"], "Richard": ["Rick", "Dick", "Rich"],
    "Joseph": ["Joe"], "Thomas": ["Tom", "Tommy"], "Charles": ["Charlie", "Chuck"], "Christopher": ["Chris"],
    "Daniel": ["Dan", "Danny"], "Matthew": ["Matt"], "Anthony": ["Tony"], "Donald": ["Don"], "Steven":
    ["Steve"], "Andrew": ["Andy", "Drew"], "Joshua": ["Josh"], "Kenneth": ["Ken"], "Edward": ["Ed", "Ted",
    "Eddie"], "Ronald": ["Ron"], "Timothy": ["Tim"], "Jeffrey": ["Jeff"], "Jacob": ["Jake"], "Nicholas":
    ["Nick"], "Jonathan": ["Jon"], "Stephen": ["Steve"], "Lawrence": ["Larry"], "Benjamin": ["Ben"], "Samuel":
    ["Sam"], "Gregory": ["Greg"], "Alexander": ["Alex"], "Patrick": ["Pat"], "Peter": ["Pete"], "Zachary":
    ["Zach"], "Elizabeth": ["Liz", "Beth", "Betty"], "Margaret": ["Maggie", "Peggy", "Meg"], "Patricia":
    ["Pat", "Patty"], "Jennifer": ["Jen", "Jenny"], "Susan": ["Sue"], "Jessica": ["Jess"], "Katherine":
    ["Kate", "Kathy"], "Catherine": ["Cathy", "Kate"], "Kimberly": ["Kim"], "Rebecca": ["Becky"], "Deborah":
    ["Debbie", "Deb"], "Pamela": ["Pam"], "Samantha": ["Sam"], "Christine": ["Chris"], "Victoria": ["Vicky"],
    "Abigail": ["Abby"], "Judith": ["Judy"], "Stephanie": ["Steph"], "Cynthia": ["Cindy"], "Amanda":
    ["Mandy"], "Theresa": ["Terry"], "Dorothy": ["Dot"],
}
SURNAMES_COMMON = """Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez""".split()  # noqa: SIM905
SURNAMES = """Hernandez Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White
Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill
Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans
Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez
Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks
Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long
Ross Foster Jimenez Quillfeather Marchetti Oyelaran Vasquez-Rowe Thistlewood Abernathy Okonkwo
Brannigan Delacroix Fairweather Halvorsen Ivanova Kowalczyk Lindqvist Mbeki Nakamura Oduya
Pellegrino Rasmussen Szabo Tremblay Underhill Valdés Whitcombe Yilmaz Zielinski Achterberg
Bellweather Castellanos Dunmore Esterhazy Fitzwilliam Gallagher Hargreaves Ingersoll Jablonski
Kettleborough Lacroix Montague Northcott Oyelowo Pemberton""".split()  # noqa: SIM905
STREETS = """Elm Oak Maple Cedar Pine Birch Willow Aspen Chestnut Hawthorn Juniper Linden Magnolia Poplar
Sycamore Alder""".split()  # noqa: SIM905
STREET_KINDS = [("Street", "St"), ("Avenue", "Ave"), ("Road", "Rd"), ("Lane", "Ln"), ("Drive", "Dr"), ("Court", "Ct")]
CITIES = [
    ("Fairhaven", "IL", "606"), ("Brookmere", "IL", "605"), ("Westbridge", "OH", "441"), ("Lakeview", "OH",
    "443"), ("Millbrook", "PA", "191"), ("Riverton", "PA", "152"), ("Ashford", "NY", "146"), ("Northgate",
    "NY", "142"), ("Cedar Falls", "MN", "554"), ("Stonehill", "MN", "559"), ("Greenport", "MA", "021"),
    ("Harborview", "MA", "024"),
]
AREA_CODES = [str(a) for a in range(201, 990, 7)]
# fmt: on


@dataclass
class Person:
    pid: int
    given: str
    middle: str
    family: str
    gender: str
    dob: date
    nid: str
    phone: str
    email: str
    address: tuple[str, str, str, str]  # line, city, state, postal
    maiden: str = ""
    generation: str = ""
    household: str = "single"
    group: int = -1  # household id


@dataclass
class SynthRecord:
    record_id: int
    person_id: int
    feed: str
    patient: Patient


@dataclass
class Dataset:
    persons: list[Person]
    records: list[SynthRecord]
    hard_negatives: dict[tuple[int, int], str] = field(default_factory=dict)  # person pair → kind


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        # Zipf-like surname weights: the ten common surnames cover ~30 % of persons
        self.surnames = SURNAMES_COMMON + SURNAMES
        self.surname_weights = [30.0 / (i + 1) for i in range(len(SURNAMES_COMMON))] + [0.6] * len(SURNAMES)
        self.pid = 0
        self.group = 0

    # --- persons ----------------------------------------------------------------------------

    def _given(self, gender: str) -> str:
        return self.rng.choice(MALE if gender == "male" else FEMALE)

    def _surname(self) -> str:
        return self.rng.choices(self.surnames, self.surname_weights)[0]

    def _dob(self, lo: int = 1935, hi: int = 2022) -> date:
        return date(lo, 1, 1) + timedelta(days=self.rng.randrange((date(hi, 12, 31) - date(lo, 1, 1)).days))

    def _phone(self) -> str:
        return f"{self.rng.choice(AREA_CODES)}5550{self.rng.randrange(100, 200)}"

    def _address(self, city: tuple[str, str, str] | None = None) -> tuple[str, str, str, str]:
        name, state, prefix = city or self.rng.choice(CITIES)
        street = f"{self.rng.randrange(1, 9999)} {self.rng.choice(STREETS)} {self.rng.choice(STREET_KINDS)[0]}"
        return street, name, state, f"{prefix}{self.rng.randrange(0, 100):02d}"

    def _person(self, **overrides) -> Person:
        self.pid += 1
        gender = overrides.pop("gender", None) or self.rng.choice(["male", "female"])
        given = overrides.pop("given", None) or self._given(gender)
        family = overrides.pop("family", None) or self._surname()
        if "family" not in overrides and self.rng.random() < 0.05 and "-" not in family:
            family = f"{family}-{self._surname()}" if self.rng.random() < 0.5 else family
        email = ""
        if self.rng.random() < 0.6:
            email = f"{given.lower()}.{family.lower()}{self.rng.randrange(1, 99)}@example.{self.rng.choice(['com', 'org', 'net'])}"
        base = {
            "pid": self.pid,
            "given": given,
            "middle": self._given(gender) if self.rng.random() < 0.5 else "",
            "family": family,
            "gender": gender,
            "dob": self._dob(),
            "nid": f"9{self.rng.randrange(0, 10**8):08d}",
            "phone": self._phone(),
            "email": email,
            "address": self._address(),
            "group": self.group,
        }
        base.update(overrides)
        return Person(**base)

    def household(self, kind: str) -> list[Person]:
        self.group += 1
        p = self._person(household=kind)
        if kind == "single":
            return [p]
        shared = {
            "family": p.family,
            "phone": p.phone,
            "address": p.address,
            "household": kind,
        }
        if kind == "spouses" or kind == "family3":
            other_gender = "female" if p.gender == "male" else "male"
            spouse_given = self._given(other_gender)
            while spouse_given == p.given:
                spouse_given = self._given(other_gender)
            dob = p.dob + timedelta(days=self.rng.randrange(-8 * 365, 8 * 365))
            spouse = self._person(gender=other_gender, given=spouse_given, dob=dob, **shared)
            wife = spouse if spouse.gender == "female" else p
            if self.rng.random() < 0.2:
                wife.maiden = self._surname()
            people = [p, spouse]
            if kind == "family3":
                child_dob = max(p.dob, spouse.dob) + timedelta(days=self.rng.randrange(20 * 365, 40 * 365))
                if child_dob < date(2025, 1, 1):
                    people.append(self._person(dob=child_dob, **shared))
            return people
        if kind == "twins":
            gender = self.rng.choice(["male", "female"])
            p.gender, p.given = gender, self._given(gender)
            twin_given = self._given(gender)
            while twin_given == p.given:
                twin_given = self._given(gender)
            return [
                p,
                self._person(gender=gender, given=twin_given, dob=p.dob, **shared),
            ]
        if kind == "jr_sr":
            p.gender, p.given = "male", self.rng.choice(MALE)
            p.dob = self._dob(1935, 1975)
            p.generation = "SR"
            junior_dob = p.dob + timedelta(days=self.rng.randrange(22 * 365, 38 * 365))
            return [
                p,
                self._person(
                    gender="male",
                    given=p.given,
                    dob=junior_dob,
                    generation="JR",
                    **shared,
                ),
            ]
        if kind == "common_name_group":
            city = self.rng.choice(CITIES)
            gender = self.rng.choice(["male", "female"])
            given = self.rng.choice(
                ["James", "John", "Michael", "Robert"]
                if gender == "male"
                else ["Mary", "Patricia", "Jennifer", "Linda"]
            )
            family = self.rng.choice(SURNAMES_COMMON[:4])
            group = []
            for _ in range(self.rng.randrange(3, 6)):
                group.append(
                    self._person(
                        gender=gender,
                        given=given,
                        family=family,
                        address=self._address(city),
                        household=kind,
                    )
                )
            return group
        raise ValueError(kind)

    # --- records ----------------------------------------------------------------------------

    def _typo(self, text: str) -> str:
        if len(text) < 3:
            return text
        i = self.rng.randrange(1, len(text) - 1)
        op = self.rng.randrange(4)
        if op == 0:
            return text[:i] + self.rng.choice("aeiournst") + text[i + 1 :]
        if op == 1:
            return text[:i] + text[i + 1 :]
        if op == 2:
            return text[:i] + text[i] + text[i:]
        return text[: i - 1] + text[i] + text[i - 1] + text[i + 1 :]

    def _digit_typo(self, digits: str) -> str:
        i = self.rng.randrange(len(digits) - 1)
        if self.rng.random() < 0.5:
            return digits[:i] + str((int(digits[i]) + self.rng.randrange(1, 10)) % 10) + digits[i + 1 :]
        return digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]

    def _case(self, text: str) -> str:
        return self.rng.choice([text.upper(), text, text.lower()]) if text else text

    def _hit(self, key: str, scale: float = 1.0) -> bool:
        return self.rng.random() < ERROR_RATES[key] * scale

    def record(self, person: Person, feed: str, record_id: int) -> SynthRecord:
        r = self.rng.random
        profile = FEEDS[feed]
        given, family = person.given, person.family
        if person.maiden and self._hit("maiden_name"):
            family = person.maiden
        if "-" in family and self._hit("hyphen_part_only"):
            family = self.rng.choice(family.split("-"))
        if given in NICK and self._hit("nickname", 2.5 if feed == "CLINIC" else 1.0):
            given = self.rng.choice(NICK[given])
        if self._hit("given_typo"):
            given = self._typo(given)
        if self._hit("family_typo"):
            family = self._typo(family)
        if self._hit("given_family_swap"):
            given, family = family, given
        if self._hit("placeholder"):
            family = "UNKNOWN"
        givens = [self._case(given)] + ([self._case(person.middle)] if person.middle and r() < 0.6 else [])
        if self._hit("placeholder"):
            givens = [
                self.rng.choice(
                    [
                        "UNKNOWN",
                        "BABY GIRL" if person.gender == "female" else "BABY BOY",
                    ]
                )
            ]
        suffix = [person.generation] if person.generation and self._hit("generation_suffix_shown") else []
        name = HumanName(family=self._case(family), given=givens, suffix=suffix)

        dob = person.dob
        text_dob = dob.isoformat()
        if dob.day <= 12 and dob.day != dob.month and self._hit("dob_day_month_swap"):
            text_dob = f"{dob.year:04d}-{dob.day:02d}-{dob.month:02d}"
        elif self._hit("dob_year_off"):
            year = dob.year + self.rng.choice([-1, 1])
            text_dob = f"{year:04d}-{dob.month:02d}-{min(dob.day, 28):02d}"
        elif self._hit("dob_component_off"):
            if r() < 0.5:
                text_dob = f"{dob.year:04d}-{dob.month:02d}-{self.rng.randrange(1, 29):02d}"
            else:
                text_dob = f"{dob.year:04d}-{self.rng.randrange(1, 13):02d}-{min(dob.day, 28):02d}"
        if self._hit("dob_partial"):
            text_dob = text_dob[:4] if r() < 0.5 else text_dob[:7]
        if self._hit("placeholder"):
            text_dob = "1900-01-01"

        identifiers = [
            Identifier(
                system=f"urn:hub:{feed.lower()}:mrn",
                value=f"{feed[0]}{record_id:07d}",
                type="MR",
            )
        ]
        if r() < profile["nid"]:
            nid = person.nid
            if self._hit("national_id_typo"):
                nid = self._digit_typo(nid)
            if self._hit("placeholder"):
                nid = self.rng.choice(["999999999", "000000000"])
            identifiers.append(
                Identifier(
                    system="urn:hub:national-id",
                    value=f"{nid[:3]}-{nid[3:5]}-{nid[5:]}",
                    type="SS",
                )
            )

        moved = self._hit("moved")
        telecoms = []
        if r() < profile["phone"]:
            phone = self._phone() if moved and r() < 0.5 else person.phone
            if self._hit("phone_typo"):  # only the last two digits, so the number stays 555-01xx
                phone = phone[:-2] + self._digit_typo(phone[-2:])
            if self._hit("placeholder"):
                phone = "0000000000"
            fmt = self.rng.randrange(4)
            shown = [
                phone,
                f"({phone[:3]}) {phone[3:6]}-{phone[6:]}",
                f"{phone[:3]}.{phone[3:6]}.{phone[6:]}",
                f"+1 {phone[:3]} {phone[3:6]} {phone[6:]}",
            ][fmt]
            telecoms.append(ContactPoint(system="phone", value=shown))
        if person.email and r() < profile["email"]:
            telecoms.append(
                ContactPoint(
                    system="email",
                    value=self.rng.choice([person.email, person.email.upper()]),
                )
            )
        addresses = []
        if r() < profile["address"]:
            line, city, state, postal = self._address() if moved else person.address
            if r() < 0.4:  # abbreviations and punctuation
                for full, short in STREET_KINDS:
                    line = line.replace(full, short + self.rng.choice(["", "."]))
            if r() < 0.15:
                postal = f"{postal}-{self.rng.randrange(0, 10000):04d}"
            addresses.append(
                Address(
                    line=[self._case(line)],
                    city=self._case(city),
                    state=state,
                    postal_code=postal,
                )
            )
        patient = Patient(
            identifiers=identifiers,
            names=[name],
            birth_date=text_dob,
            gender=person.gender if r() < profile["gender"] else None,
            addresses=addresses,
            telecoms=telecoms,
            multiple_birth=(1 + (person.pid % 2)) if person.household == "twins" and r() < 0.3 else None,
        )
        return SynthRecord(record_id, person.pid, feed, patient)


def generate(n_persons: int = 5000, seed: int = 42) -> Dataset:
    """Persons in households until `n_persons`, then 1–4 records each from distinct feeds."""
    gen = Generator(seed)
    persons: list[Person] = []
    kinds, weights = list(HOUSEHOLDS), list(HOUSEHOLDS.values())
    while len(persons) < n_persons:
        persons.extend(gen.household(gen.rng.choices(kinds, weights)[0]))
    persons = persons[:n_persons]
    hard: dict[tuple[int, int], str] = {}
    by_group: dict[int, list[Person]] = {}
    for p in persons:
        by_group.setdefault(p.group, []).append(p)
    for members in by_group.values():
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                kind = a.household
                if kind == "family3":
                    kind = "parent_child" if abs(a.dob.year - b.dob.year) >= 18 else "spouses"
                hard[(a.pid, b.pid)] = {"common_name_group": "common_name"}.get(kind, kind)
    records: list[SynthRecord] = []
    feeds = list(FEEDS)
    for p in persons:
        n = gen.rng.choices([1, 2, 3, 4], [0.2, 0.35, 0.3, 0.15])[0]
        for feed in gen.rng.sample(feeds, n):
            records.append(gen.record(p, feed, len(records)))
    return Dataset(persons, records, hard)

"""Code phrases for live transfers and drop codes for dead drops.

A code phrase is `<channel>-<word>-<word>-<word>`: the channel is the relay's (it only names
where to meet), the words are the secret the PAKE runs on. The words come from WORDS below
(short, common, distinct English words, easy to say and type); a word not in the list is
refused before anything is sent, so a typo does not burn the sender's one-guess channel.
Three words of 678 give about 28 bits: enough against an online guesser who gets one try
per code (a wrong guess closes the channel), not meant to resist an offline search.

A drop code is for a dead drop that waits on the relay for days, so it is high entropy
(125 bits): `drop-` and five groups of five Crockford base32 symbols. Both ends derive from it
two one-time identities (the drop's sender and recipient); the relay sees only their hpks.
"""

from __future__ import annotations

import difflib
import re
import secrets

from nacl.encoding import RawEncoder
from nacl.hash import blake2b
from nacl.public import PrivateKey

from relay.client.errors import BadCode

WORDS: tuple[str, ...] = tuple("""
    able acid acorn acre actor adapt admit adobe adult aero agent agile aisle alarm album
    alert algae alias alley allow aloe alpha amber amble amigo ample angle ankle anvil apple
    apron arbor arena argue armor arrow ashen aspen atlas atom attic audio audit avid awake
    award axis bacon badge bagel baker balmy bamboo banjo barge baron basil basin batch
    beach beacon beard beast bench berry bike birch bison blade blank blaze blend bliss
    block bloom blues blunt board boast bonus boost booth bore boxer brave bread brick bride
    brief brisk broom brush bucket buddy bugle bulb bunch bunny cabin cable cactus cadet
    camel cameo canal candy canoe canon cargo carol carpet carrot cedar chalk champ charm
    chart chase cheek cheer chess chief chili chime chip chord cider cinema civic claim
    clamp clash clay clerk cliff climb cloak clock cloud clover coach coast cobra cocoa
    comet comic coral corn cotton couch cough crane crate crest crisp crown crumb crust
    cubic cumin curve cycle daisy dance dash dawn decal decoy delta denim depot derby desk
    diary dice diner disco ditch diver dock dodge dolphin donut dove draft dragon drama
    dream dress drift drill drum duck dune dusk dusty eager eagle early earth easel ebony
    echo edge elbow elder elite elm ember emu enjoy entry equal error essay ether event
    exact exit fable fabric facet fairy falcon fancy farm feast feather fence ferry fever
    fiber field fifth figure film finch fjord flag flame flash fleet flint flock flora flour
    fluid flute focus foggy forest forge fossil frame fresh frost fruit fudge funny fuzzy
    gala galaxy gamma garden garlic gecko gem genie giant ginger glad glass glide globe
    glove glow goat gold golf goose gorge grain grape graph grass gravy great green grid
    grove guard guest guide guitar gulf gusto habit hammer harbor harp hatch haven hazel
    heart hedge helmet herb hero heron hinge hippo hobby honey hood hook hope horse hotel
    humor husky hyena icon idea igloo image inch index indigo ink input iris iron island
    ivory jacket jade jaguar jam jazz jelly jewel jockey joke jolly judge juice jumbo jungle
    kayak kettle kiosk kite kiwi knee knife koala label ladder lake lamp lance laser latch
    lava lawn layer leaf lemon lens level lilac lily limb linen lion liter llama lobby lodge
    lotus lucky lunar lunch lyric macro magic mango manor maple marble march market mask
    meadow medal melon mentor merit metal meteor mild mimic mint mirror mixer model mocha
    molar monk moose moral mosaic moss motel motor mouse muffin mural music nacho napkin
    navy nectar needle nest nickel night ninja noble noodle north notch novel nutmeg oak
    oasis ocean octet olive omega onion opal opera orbit orchid organ otter ounce outer oval
    oven owl oxide oyster paddle pagoda palm panda panel paper parade parrot pasta patch
    peach pearl pebble pecan pedal penny pepper piano pickle pilot pinch pine pixel pizza
    plank plaza plum poem polar pony poppy porch potato pouch prism prize proud pulse pupil
    puppy quail quartz queen quest quick quiet quilt quota rabbit radar radio raft rain
    ranch raven razor recipe relic remix rhino rhyme ribbon ridge rifle ripple river roast
    robin robot rocket rodeo roof rose rover royal ruby rugby ruler rumba rustic saddle
    safari saga salad salmon salsa salt sandal satin sauce savor scale scarf scout sea seal
    seed shadow shark shelf shell shrub sierra silk silver siren sketch skier slate sled
    slope smile snack snow soda solar sonic soup spark spice spider spoon sprout squid stamp
    star steam stone storm straw sugar summit sunny swan sweet syrup table taco talent tango
    tapir teapot tempo tennis thorn thyme tiger timber toast token topaz torch totem tower
    trail train tread trout truck tulip tuna tundra turtle tutor twig umbra uncle union
    unity urban usher valley valve vapor vault velvet venue verse vessel video vigor villa
    vinyl violet viper visor vital vivid vocal voyage wafer wagon walnut walrus waltz water
    wave wheat whale wheel whisk willow wind wing wizard wolf wombat wonder wool world wren
    yacht yak yard yarn yodel yogurt young zebra zero zest zinc zipper zone
""".split())
_WORD_SET = frozenset(WORDS)
CODE_WORDS = 3
DROP_PREFIX = "drop"
DROP_GROUPS = 5
DROP_GROUP_LEN = 5
# Crockford's base32: no i, l, o, u, so what is read aloud or copied by hand is unambiguous.
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_CROCKFORD_FIXES = str.maketrans({"o": "0", "i": "1", "l": "1"})
_SEPARATORS = re.compile(r"[\s_]+")
_CHANNEL = re.compile(r"[a-z0-9]{1,64}")


def make_code(channel: str, words: int = CODE_WORDS) -> str:
    """A fresh code phrase for the channel the relay gave the sender."""
    return "-".join([channel, *(secrets.choice(WORDS) for _ in range(words))])


def normalise(text: str) -> str:
    """What the user typed, as a code: trimmed, lower case, spaces read as hyphens."""
    return _SEPARATORS.sub("-", text.strip().lower()).strip("-")


def is_drop_code(text: str) -> bool:
    return normalise(text).startswith(DROP_PREFIX + "-")


def check_code(text: str) -> str:
    """The normalised code phrase; BadCode (with a hint) if it is malformed or has a word
    that is not in the list."""
    code = normalise(text)
    parts = code.split("-")
    if len(parts) < 1 + CODE_WORDS or not _CHANNEL.fullmatch(parts[0]):
        raise BadCode("a code looks like 1234-word-word-word (as the sender's relay printed it)")
    for word in parts[1:]:
        if word not in _WORD_SET:
            close = difflib.get_close_matches(word, WORDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            shown = "".join(c if c.isalnum() else "?" for c in word[:20])
            raise BadCode(f"{shown!r} is not a code word{hint}")
    return code


def make_drop_code() -> str:
    symbols = "".join(secrets.choice(_CROCKFORD) for _ in range(DROP_GROUPS * DROP_GROUP_LEN))
    groups = [symbols[i:i + DROP_GROUP_LEN] for i in range(0, len(symbols), DROP_GROUP_LEN)]
    return "-".join([DROP_PREFIX, *groups])


def check_drop_code(text: str) -> str:
    """The canonical drop code; BadCode if it is not one (typos of o/i/l are forgiven)."""
    code = normalise(text)
    if not code.startswith(DROP_PREFIX + "-"):
        raise BadCode("a drop code starts with drop-")
    symbols = code[len(DROP_PREFIX) + 1:].replace("-", "").translate(_CROCKFORD_FIXES)
    if len(symbols) != DROP_GROUPS * DROP_GROUP_LEN or any(c not in _CROCKFORD for c in symbols):
        raise BadCode(f"a drop code is drop- and {DROP_GROUPS} groups of {DROP_GROUP_LEN} "
                      f"letters and digits")
    groups = [symbols[i:i + DROP_GROUP_LEN] for i in range(0, len(symbols), DROP_GROUP_LEN)]
    return "-".join([DROP_PREFIX, *groups])


def drop_identities(drop_code: str) -> tuple[PrivateKey, PrivateKey]:
    """(drop sender key, drop recipient key), derived from the canonical drop code. Keyed
    BLAKE2b with a per-role salt; no stretching is needed at 125 bits."""
    secret = check_drop_code(drop_code).encode("ascii")
    keys = []
    for role in (b"sender", b"recipient"):
        seed = blake2b(secret, digest_size=32, salt=role.ljust(16, b"\0"),
                       person=b"relay-drop-v1".ljust(16, b"\0"), encoder=RawEncoder)
        keys.append(PrivateKey(seed))
    return keys[0], keys[1]


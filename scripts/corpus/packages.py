"""The Debian packages the corpora are built from, with the facts their captions state.

Each row is one package of the Debian bookworm archive that ships openly licensed music (game
soundtracks, song packs). `version` is the version we built with; when the archive no longer has
it, the build takes the candidate version and says so. Only the music is extracted:

  include     path prefixes inside the package (keeps big data packages cheap to unpack)
  archive     (path of a zip/pk3 inside the package, member prefix) for packages that ship one
  skip        regexes (on the path inside the package) of files left out: exact loops, silence,
              the same piece shipped by another package
  only        a regex a path must match (packages whose music shares a folder with other data)
  license     the licence of the music files as the package's debian/copyright states it
  game        what the music is from; the caption's last sentence is `role` with {game} filled in
"""
from __future__ import annotations

from dataclasses import dataclass

AUDIO_EXTENSIONS = (".ogg", ".opus", ".mp3", ".flac", ".wav")
MIN_TRACK_S = 10.0  # shorter files are jingles and effects, not tracks
DEFAULT_ROLE = "Soundtrack music from {game}."
SONG_PACK_ROLE = "Song from a song pack for {game}."


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    game: str
    license: str
    include: tuple[str, ...] = ()
    archive: tuple[str, str] | None = None
    skip: tuple[str, ...] = ()
    only: str | None = None
    genre: str | None = None
    artist: str | None = None
    artist_note: str | None = None
    role: str = DEFAULT_ROLE
    xl_only: bool = False

    def members(self) -> list[str]:
        """The tar members to extract from the package's data archive (copyright file first)."""
        out = [f"./usr/share/doc/{self.name}/copyright"]
        if self.archive:
            return out + ["./" + self.archive[0]]
        return out + ["./" + p for p in self.include]


_P = Package
PACKAGES: tuple[Package, ...] = (
    _P("wesnoth-1.16-music", "1:1.16.9-1", "The Battle for Wesnoth, a turn-based fantasy strategy game",
       "GPL-2+", include=("usr/share/games/wesnoth/1.16/data/core/music/",), skip=(r"silence\.ogg$",)),
    # music/menu.opus is also albums/aftermath_soundtrack/menu_enhanced.opus
    _P("warzone2100-music", "4.3.3-3", "Warzone 2100, a real-time strategy game",
       "GPL-2+ / CC-BY-SA-3.0+ (per album license.txt)", include=("usr/share/games/warzone2100/music/",),
       skip=(r"music/menu\.opus$",)),
    _P("ufoai-music", "2.5-2", "UFO: Alien Invasion, a squad-based tactical strategy game",
       "GPL-2+, CC-BY-3.0 or CC-BY-SA-3.0 per file (see copyright)",
       archive=("usr/share/games/ufoai/base/0music.pk3", "music/"), skip=(r"dynamictest",)),
    _P("nexuiz-music", "2.5.2-12", "Nexuiz, a first-person shooter", "GPL-2+",
       archive=("usr/share/games/nexuiz/data/music.pk3", "sound/cdtracks/")),
    _P("singularity-music", "007-2", "Endgame: Singularity, a strategy/simulation game", "CC-BY-SA-3.0",
       include=("usr/share/games/singularity/music/",)),
    _P("drascula-music", "1.0+ds4-2",
       "Drascula: The Vampire Strikes Back, a point-and-click adventure game (Alcachofa Soft, 1996)",
       "Drascula-License (BSD-like, freeware)", include=("usr/share/scummvm/drascula/audio/",)),
    _P("fretsonfire-songs-muldjord", "2.dfsg-2.1", "Frets on Fire, a guitar rhythm game", "CC-BY-SA-3.0",
       include=("usr/share/games/fretsonfire/data/songs/",), genre="metal", role=SONG_PACK_ROLE,
       artist_note="El Senator of the Danish metal band Muldjord"),
    _P("fretsonfire-songs-sectoid", "1.dfsg-3.1", "Frets on Fire, a guitar rhythm game", "Expat (MIT)",
       include=("usr/share/games/fretsonfire/data/songs/",), role=SONG_PACK_ROLE),
    _P("asc-music", "1.3-6", "Advanced Strategic Command, a turn-based strategy game", "GPL-2+",
       include=("usr/share/games/asc/music/",), artist="Michael Kievernagel"),
    _P("pushover-data", "0.0.5+git20180909-4", "Pushover, a domino puzzle game", "GPL-3+",
       include=("usr/share/pushover/themes/",), artist="Roberto Lorenz"),
    # through_space.ogg is the same piece as singularity-music's "Through Space"
    _P("starfighter-data", "2.4-1", "Project: Starfighter, a 2D space shoot-em-up",
       "GPL-2+ (Files: * in copyright)", include=("usr/share/starfighter/music/",),
       skip=(r"through_space\.ogg$",)),
    _P("colobot-common-sounds", "0.2.0-2", "Colobot: Gold Edition, an educational programming strategy game",
       "GPL-3+", include=("usr/share/games/colobot/music/",)),
    _P("marsshooter-data", "0.7.6-7", "M.A.R.S., a 2D space shooter", "CC-BY-SA-3.0",
       include=("usr/share/games/marsshooter/audio/music/", "usr/share/games/marsshooter/audio/menu.ogg",
                "usr/share/games/marsshooter/audio/tutorial.ogg"),
       role="Album track used as music in {game}."),
    _P("hedgewars-data", "1.0.2-6", "Hedgewars, a turn-based artillery game",
       "GPL-2 (package) / CC-BY-SA-3.0 (some files)", include=("usr/share/games/hedgewars/Data/Music/",)),
    _P("supertux-data", "0.6.3-2", "SuperTux, a 2D jump-and-run platform game", "GPL-2+ (data/music/*)",
       include=("usr/share/games/supertux2/music/",)),
    # music000-003 are one 120-176 s piece repeated about ten times (waveform correlation > 0.99)
    _P("planetblupi-music-ogg", "1.14.2-3", "Planet Blupi, a real-time strategy/puzzle game", "GPL-3+",
       include=("usr/share/planetblupi/music/",), skip=(r"music00[0-3]\.ogg$",)),
    # ---- xl only: heavy game-data packages ----
    _P("0ad-data", "0.0.26-1", "0 A.D., a real-time strategy game of ancient warfare", "CC-BY-SA-3.0",
       archive=("usr/share/games/0ad/mods/public/public.zip", "audio/music/"), xl_only=True),
    _P("naev-data", "0.8.2-1", "Naev, a 2D space trading and combat game",
       "GPL-2+, GPL-3/CC-BY-3.0, CC-BY(-SA)-3.0 per file", include=("usr/share/naev/dat/snd/music/",),
       xl_only=True),
    # music/menu.ogg is the same audio as ingame_14.ogg
    _P("widelands-data", "2:1.1-3", "Widelands, a real-time economy strategy game",
       "GPL-2+ / CC-BY-SA-3.0 (some files)", include=("usr/share/games/widelands/data/music/",),
       skip=(r"music/menu\.ogg$",), xl_only=True),
    _P("supertuxkart-data", "1.4+dfsg-2", "SuperTuxKart, a kart racing game", "CC-BY-SA-3.0/4.0, GPL per file",
       include=("usr/share/games/supertuxkart/data/music/",), xl_only=True),
    _P("freedroidrpg-data", "1.0-1", "FreedroidRPG, a role-playing game", "GPL-2+",
       include=("usr/share/freedroidrpg/data/sound/music/",), xl_only=True),
    # battle_theme.ogg is the same piece as supertux-data's music/misc/battle_theme.ogg
    _P("flare-game", "1.14-1", "Flare, an action role-playing game", "CC-BY-SA-3.0+",
       include=("usr/share/games/flare/mods/fantasycore/music/",), skip=(r"battle_theme\.ogg$",), xl_only=True),
    _P("unknown-horizons", "2019.1-6", "Unknown Horizons, a real-time economy simulation game",
       "GPL-2+ (package)", include=("usr/share/unknown-horizons/content/audio/music/",), xl_only=True),
    _P("openclonk-data", "8.1-3", "OpenClonk, an action/strategy platform game", "CC-BY-3.0 / CC0 (see copyright)",
       include=("usr/share/games/openclonk/Music.ocg/",), xl_only=True),
    _P("megaglest-data", "3.13.0-3", "MegaGlest, a real-time strategy game", "CC-BY-SA-3.0",
       include=("usr/share/games/megaglest/",), only=r"/music/", xl_only=True),
    _P("freecol", "1.0.0-1", "FreeCol, a turn-based colonization strategy game", "CC-BY-4.0",
       include=("usr/share/games/freecol/default/resources/music/",), xl_only=True),
)
BY_NAME: dict[str, Package] = {p.name: p for p in PACKAGES}


@dataclass(frozen=True)
class SoundFont:
    package: str
    path: str      # inside the package
    license: str
    name: str      # as the captions name it

    def members(self) -> list[str]:
        return [f"./usr/share/doc/{self.package}/copyright", "./" + self.path]


SOUNDFONTS: dict[str, SoundFont] = {s.package: s for s in (
    SoundFont("fluid-soundfont-gm", "usr/share/sounds/sf2/FluidR3_GM.sf2", "MIT", "FluidR3_GM"),
    SoundFont("timgm6mb-soundfont", "usr/share/sounds/sf2/TimGM6mb.sf2", "GPL-2", "TimGM6mb"),
    SoundFont("musescore-general-soundfont-small", "usr/share/sounds/sf3/MuseScore_General_Lite.sf3", "MIT",
              "MuseScore_General_Lite"),
)}
DEFAULT_SOUNDFONT = "fluid-soundfont-gm"


def packages_for(target: str) -> list[str]:
    """The package names of a recordings target: `large` (music packages) or `xl` (+ game data)."""
    if target == "large":
        return [p.name for p in PACKAGES if not p.xl_only]
    if target == "xl":
        return [p.name for p in PACKAGES]
    raise ValueError(f"no package list for target {target!r}; use 'large' or 'xl'")

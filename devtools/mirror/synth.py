"""Deterministic generator of mood-bearing music and sung lines (numpy only).

The mirror corpora are built from this, so a model trained on them must learn what a
listener hears: mode, tempo, register, brightness, dissonance, articulation, vibrato.
Every trait is jittered per clip (key, tempo, timbre, contour, gain, noise) so that no
single trivial cue, loudness above all, separates the moods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TWO_PI = 2.0 * math.pi
FADE_S = 0.005
MIN_SAMPLE_RATE = 8000

Range = tuple[float, float]


@dataclass(frozen=True)
class MoodProfile:
    """Musical traits of one mood; every (lo, hi) pair is drawn uniformly per clip."""

    mode: str  # "major" | "minor" | "diminished" (octatonic: tritones and clusters)
    tempo_bpm: Range
    register: Range  # MIDI centre of the melody
    span: int  # semitones the melody may wander either side of its centre
    note_beats: tuple[float, ...]  # melody note lengths, drawn uniformly: rhythmic density
    legato: Range  # sounding fraction of each note: articulation
    attack_s: Range
    decay_s: Range
    harmonics: tuple[int, int]
    rolloff: Range  # harmonic k has amplitude k**-rolloff: brightness
    drive: Range  # tanh saturation; 0 = clean
    peak: Range  # final peak level, random gain within it
    dissonance: float  # chance a chord gains a tritone / semitone cluster
    chromatic: float  # chance a melody note is pushed a semitone off the scale
    leap: float  # chance of a leap of a 4th or more
    contour: float  # degrees per note the phrase drifts (negative: falling lines)
    rest: float  # chance a melody slot is silent
    accompaniment: str  # "pad" | "strum" | "arp"
    comp_beats: float  # re-strike / arpeggio step of the accompaniment
    chord_beats: tuple[int, ...]
    percussion: float  # drum level; 0 = none
    hit_density: float  # chance of a hat per eighth note
    swell: float  # depth of slow random loudness changes
    # sung line (voice=True)
    voice_register: float  # semitones above the singer's comfortable pitch
    vibrato_cents: Range
    vibrato_hz: Range
    tremolo: float  # amplitude wobble depth at 5-9 Hz (fear)
    roughness: float  # amplitude modulation at 30-70 Hz plus saturation (anger)
    jitter_cents: float  # slow random pitch wander (unstable pitch)
    breath: Range
    glide_s: Range
    tilt: Range  # spectral tilt of the voice source: larger is darker, softer


MOOD_PROFILES: dict[str, MoodProfile] = {
    "neutral": MoodProfile(
        mode="major", tempo_bpm=(92, 112), register=(62, 70), span=9, note_beats=(0.5, 1, 1, 2),
        legato=(0.7, 0.9), attack_s=(0.005, 0.02), decay_s=(0.3, 0.8), harmonics=(5, 8), rolloff=(1.2, 1.8),
        drive=(0, 0), peak=(0.3, 0.8), dissonance=0.05, chromatic=0.03, leap=0.15, contour=0.0, rest=0.08,
        accompaniment="strum", comp_beats=1.0, chord_beats=(4,), percussion=0.25, hit_density=0.4, swell=0.1,
        voice_register=0, vibrato_cents=(20, 40), vibrato_hz=(5.0, 5.8), tremolo=0.0, roughness=0.0,
        jitter_cents=5, breath=(0.05, 0.12), glide_s=(0.03, 0.06), tilt=(1.2, 1.5),
    ),
    "calm": MoodProfile(
        mode="major", tempo_bpm=(60, 76), register=(62, 72), span=7, note_beats=(1, 2, 2, 3),
        legato=(0.95, 1.0), attack_s=(0.08, 0.2), decay_s=(1.0, 2.5), harmonics=(3, 5), rolloff=(1.8, 2.6),
        drive=(0, 0), peak=(0.3, 0.7), dissonance=0.0, chromatic=0.0, leap=0.05, contour=0.0, rest=0.05,
        accompaniment="pad", comp_beats=4.0, chord_beats=(4, 8), percussion=0.0, hit_density=0.0, swell=0.15,
        voice_register=-2, vibrato_cents=(15, 30), vibrato_hz=(4.5, 5.3), tremolo=0.0, roughness=0.0,
        jitter_cents=3, breath=(0.12, 0.25), glide_s=(0.06, 0.12), tilt=(1.6, 2.0),
    ),
    "happy": MoodProfile(
        mode="major", tempo_bpm=(126, 152), register=(70, 79), span=12, note_beats=(0.25, 0.5, 0.5, 1),
        legato=(0.45, 0.7), attack_s=(0.002, 0.01), decay_s=(0.2, 0.5), harmonics=(6, 10), rolloff=(0.9, 1.4),
        drive=(0, 0.5), peak=(0.35, 0.9), dissonance=0.0, chromatic=0.02, leap=0.3, contour=0.3, rest=0.08,
        accompaniment="strum", comp_beats=0.5, chord_beats=(2, 4), percussion=0.5, hit_density=0.6, swell=0.1,
        voice_register=4, vibrato_cents=(30, 60), vibrato_hz=(5.5, 6.5), tremolo=0.0, roughness=0.0,
        jitter_cents=4, breath=(0.04, 0.1), glide_s=(0.02, 0.04), tilt=(1.0, 1.3),
    ),
    "sad": MoodProfile(
        mode="minor", tempo_bpm=(54, 72), register=(52, 62), span=8, note_beats=(1, 1, 2, 3),
        legato=(0.9, 1.0), attack_s=(0.04, 0.12), decay_s=(0.8, 2.0), harmonics=(3, 6), rolloff=(1.8, 2.6),
        drive=(0, 0), peak=(0.3, 0.75), dissonance=0.05, chromatic=0.05, leap=0.05, contour=-0.4, rest=0.05,
        accompaniment="arp", comp_beats=1.0, chord_beats=(4, 8), percussion=0.0, hit_density=0.0, swell=0.2,
        voice_register=-4, vibrato_cents=(25, 50), vibrato_hz=(4.0, 5.0), tremolo=0.05, roughness=0.0,
        jitter_cents=8, breath=(0.12, 0.25), glide_s=(0.08, 0.15), tilt=(1.6, 2.1),
    ),
    "angry": MoodProfile(
        mode="minor", tempo_bpm=(138, 172), register=(55, 67), span=10, note_beats=(0.25, 0.25, 0.5),
        legato=(0.5, 0.8), attack_s=(0.001, 0.005), decay_s=(0.15, 0.4), harmonics=(9, 14), rolloff=(0.6, 1.0),
        drive=(1.5, 4.0), peak=(0.3, 0.9), dissonance=0.35, chromatic=0.15, leap=0.2, contour=0.0, rest=0.1,
        accompaniment="strum", comp_beats=0.5, chord_beats=(2, 4), percussion=0.8, hit_density=0.85, swell=0.1,
        voice_register=3, vibrato_cents=(5, 20), vibrato_hz=(6.0, 7.0), tremolo=0.0, roughness=0.5,
        jitter_cents=10, breath=(0.08, 0.18), glide_s=(0.01, 0.03), tilt=(0.6, 0.9),
    ),
    "fearful": MoodProfile(
        mode="diminished", tempo_bpm=(96, 132), register=(60, 76), span=14, note_beats=(0.25, 0.5, 1, 1.5),
        legato=(0.6, 0.95), attack_s=(0.01, 0.06), decay_s=(0.3, 1.0), harmonics=(4, 8), rolloff=(1.2, 1.8),
        drive=(0, 0.3), peak=(0.3, 0.85), dissonance=0.7, chromatic=0.35, leap=0.35, contour=0.0, rest=0.15,
        accompaniment="arp", comp_beats=0.25, chord_beats=(2, 4), percussion=0.2, hit_density=0.3, swell=0.4,
        voice_register=5, vibrato_cents=(40, 90), vibrato_hz=(6.5, 8.5), tremolo=0.45, roughness=0.1,
        jitter_cents=30, breath=(0.15, 0.3), glide_s=(0.03, 0.08), tilt=(1.2, 1.6),
    ),
    "scary": MoodProfile(
        mode="diminished", tempo_bpm=(64, 96), register=(48, 60), span=20, note_beats=(0.25, 1, 2, 2),
        legato=(0.8, 1.0), attack_s=(0.05, 0.3), decay_s=(0.8, 2.0), harmonics=(4, 9), rolloff=(1.0, 1.6),
        drive=(0, 1.0), peak=(0.3, 0.9), dissonance=0.9, chromatic=0.4, leap=0.4, contour=-0.1, rest=0.15,
        accompaniment="pad", comp_beats=4.0, chord_beats=(4, 8), percussion=0.3, hit_density=0.1, swell=0.5,
        voice_register=0, vibrato_cents=(30, 80), vibrato_hz=(7.0, 9.0), tremolo=0.5, roughness=0.2,
        jitter_cents=40, breath=(0.2, 0.35), glide_s=(0.08, 0.2), tilt=(1.3, 1.8),
    ),
    "tender": MoodProfile(
        mode="major", tempo_bpm=(58, 78), register=(66, 76), span=8, note_beats=(0.5, 1, 1, 2),
        legato=(0.9, 1.0), attack_s=(0.03, 0.1), decay_s=(0.8, 1.8), harmonics=(2, 4), rolloff=(2.0, 3.0),
        drive=(0, 0), peak=(0.3, 0.7), dissonance=0.0, chromatic=0.0, leap=0.1, contour=0.1, rest=0.05,
        accompaniment="arp", comp_beats=0.5, chord_beats=(4,), percussion=0.0, hit_density=0.0, swell=0.1,
        voice_register=1, vibrato_cents=(15, 35), vibrato_hz=(4.8, 5.6), tremolo=0.0, roughness=0.0,
        jitter_cents=3, breath=(0.15, 0.3), glide_s=(0.05, 0.1), tilt=(1.8, 2.3),
    ),
    "funny": MoodProfile(
        mode="major", tempo_bpm=(112, 144), register=(68, 84), span=16, note_beats=(0.25, 0.5, 0.5, 0.75),
        legato=(0.25, 0.5), attack_s=(0.001, 0.005), decay_s=(0.1, 0.25), harmonics=(5, 10), rolloff=(0.8, 1.4),
        drive=(0, 0), peak=(0.35, 0.85), dissonance=0.1, chromatic=0.25, leap=0.5, contour=0.0, rest=0.15,
        accompaniment="strum", comp_beats=0.5, chord_beats=(2,), percussion=0.45, hit_density=0.5, swell=0.1,
        voice_register=6, vibrato_cents=(30, 80), vibrato_hz=(6.0, 7.0), tremolo=0.0, roughness=0.05,
        jitter_cents=10, breath=(0.05, 0.1), glide_s=(0.06, 0.12), tilt=(1.0, 1.4),
    ),
    "exciting": MoodProfile(
        mode="major", tempo_bpm=(144, 176), register=(64, 76), span=12, note_beats=(0.25, 0.25, 0.5),
        legato=(0.6, 0.85), attack_s=(0.001, 0.006), decay_s=(0.2, 0.5), harmonics=(8, 12), rolloff=(0.8, 1.2),
        drive=(0.5, 2.0), peak=(0.35, 0.9), dissonance=0.1, chromatic=0.05, leap=0.25, contour=0.2, rest=0.05,
        accompaniment="strum", comp_beats=0.25, chord_beats=(2, 4), percussion=0.8, hit_density=0.8, swell=0.15,
        voice_register=4, vibrato_cents=(20, 50), vibrato_hz=(6.0, 7.0), tremolo=0.0, roughness=0.15,
        jitter_cents=8, breath=(0.06, 0.12), glide_s=(0.02, 0.04), tilt=(0.8, 1.1),
    ),
}  # fmt: skip

SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "diminished": (0, 1, 3, 4, 6, 7, 9, 10),  # stacking its thirds gives diminished triads
}
# Chord roots as scale degrees; the octatonic ones move chromatically on purpose.
PROGRESSIONS: dict[str, tuple[tuple[int, ...], ...]] = {
    "major": ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (0, 3, 0, 4), (0, 5, 1, 4)),
    "minor": ((0, 3, 4, 0), (0, 5, 2, 6), (0, 3, 6, 2), (0, 5, 3, 4), (0, 6, 5, 4)),
    "diminished": ((0, 1, 0, 3), (0, 3, 1, 5), (0, 2, 5, 1), (0, 6, 1, 3)),
}
# (F1, F2, F3) of an adult male voice, Hz (Peterson & Barney averages): a, e, i, o, u.
VOWELS = np.array(
    [[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]], dtype=np.float64
)
FORMANT_BW = np.array([90.0, 110.0, 170.0])
FORMANT_GAIN = np.array([1.0, 0.55, 0.3])
SINGER_BASE_MIDI = 62.0  # comfortable pitch of the default (female) singer; pitch_offset moves it


@dataclass(frozen=True)
class _Notes:
    """A monophonic line: onsets in samples (first is 0), per-note pitch, level and gate."""

    onsets: np.ndarray  # int64, strictly increasing, onsets[0] == 0
    midi: np.ndarray  # float64
    vel: np.ndarray  # float32, 0 = rest
    gate_s: np.ndarray  # float64 seconds the note sounds before its release


def synthesize(
    mood: str,
    seconds: float,
    sample_rate: int,
    rng: np.random.Generator,
    voice: bool = False,
    *,
    pitch_offset: float = 0.0,
    formant_scale: float = 1.0,
    intensity: float = 1.0,
) -> np.ndarray:
    """Mono float32 in [-1, 1], exactly round(seconds * sample_rate) samples.

    voice=True sings one line (vibrato, formants, breath); otherwise chords, melody, bass,
    drums. pitch_offset (semitones) and formant_scale shift a singer's pitch and vocal tract
    (a male singer: about -10 and 0.87); intensity > 1 is a stronger, more extreme delivery.
    """
    profile = _profile(mood)
    n = round(seconds * sample_rate)
    if n < 1 or sample_rate < MIN_SAMPLE_RATE:
        raise ValueError(f"need seconds > 0 and sample_rate >= {MIN_SAMPLE_RATE}, got {seconds}, {sample_rate}")
    if not 0.25 <= intensity <= 4.0 or not 0.5 <= formant_scale <= 2.0:
        raise ValueError(f"intensity {intensity} or formant_scale {formant_scale} out of range")
    if voice:
        x = _sing(profile, n, sample_rate, rng, pitch_offset, formant_scale, intensity)
    else:
        x = _play(profile, n, sample_rate, rng, intensity)
    # The sung line has its own roughness; full instrumental drive on top would make every angry take a square wave.
    return _finish(x, profile, sample_rate, rng, intensity, drive_scale=0.3 if voice else 1.0)


def _profile(mood: str) -> MoodProfile:
    try:
        return MOOD_PROFILES[mood]
    except KeyError:
        raise ValueError(f"unknown mood {mood!r}; known moods: {', '.join(sorted(MOOD_PROFILES))}") from None


def _draw(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _midi_hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * np.power(2.0, (np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _degree_semitones(degrees: np.ndarray, scale: tuple[int, ...]) -> np.ndarray:
    steps = np.asarray(scale)
    degrees = np.asarray(degrees, dtype=np.int64)
    return steps[degrees % len(steps)] + 12 * (degrees // len(steps))


def _fold(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect a random walk back into [lo, hi] so melodies bounce off their range."""
    width = hi - lo
    y = np.mod(x - lo, 2 * width)
    return np.where(y > width, 2 * width - y, y) + lo


# ----------------------------------------------------------------------------- score


def _chords(p: MoodProfile, rng: np.random.Generator, total_beats: float) -> tuple[np.ndarray, np.ndarray]:
    """Chord start beats and chord tones as scale degrees (n_chords x 3), cycling a progression."""
    progression = PROGRESSIONS[p.mode][rng.integers(len(PROGRESSIONS[p.mode]))]
    length = int(rng.choice(p.chord_beats))
    count = math.ceil(total_beats / length) + 1
    roots = np.asarray(progression)[np.arange(count) % len(progression)]
    return np.arange(count) * float(length), roots[:, None] + np.array([0, 2, 4])


def _melody(
    p: MoodProfile, rng: np.random.Generator, total_beats: float, chord_starts: np.ndarray, chord_degs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Melody as (start beats, length beats, scale degree, chromatic shift): a phrase-wise random walk."""
    count = math.ceil(total_beats / min(p.note_beats)) + 2
    lengths = rng.choice(np.asarray(p.note_beats, dtype=np.float64), size=count)
    starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    keep = int(np.searchsorted(starts, total_beats)) + 1
    starts, lengths = starts[:keep], lengths[:keep]
    steps = rng.choice(np.array([-2, -1, 0, 1, 2]), size=keep, p=_tilted(p.contour))
    leaps = rng.random(keep) < p.leap
    steps = np.where(leaps, rng.choice([-1, 1], size=keep) * rng.integers(3, 6, size=keep), steps)
    # Each 8-beat phrase restarts the walk, so contour drift shapes phrases instead of running off.
    phrase = (starts // 8).astype(np.int64)
    walk = np.cumsum(steps)
    first = np.searchsorted(phrase, np.arange(phrase[-1] + 1))
    phrase_start = rng.integers(-2, 3, size=phrase[-1] + 1) - round(4 * p.contour)
    degs = walk - walk[first][phrase] + phrase_start[phrase]
    span_degs = p.span * len(SCALES[p.mode]) / 12.0
    degs = np.rint(_fold(degs.astype(np.float64), -span_degs, span_degs)).astype(np.int64)
    # The first note under each chord lands on a chord tone: consonance where the mode allows it.
    chord_of = np.searchsorted(chord_starts, starts, side="right") - 1
    is_first = np.concatenate([[True], np.diff(chord_of) != 0])
    tones = chord_degs[chord_of]
    octave_tones = tones[:, :, None] + len(SCALES[p.mode]) * np.array([-2, -1, 0, 1])
    flat = octave_tones.reshape(keep, -1)
    nearest = flat[np.arange(keep), np.argmin(np.abs(flat - degs[:, None]), axis=1)]
    degs = np.where(is_first, nearest, degs)
    chroma = np.where(rng.random(keep) < p.chromatic, rng.choice([-1, 1], size=keep), 0)
    return starts, lengths, degs, chroma


def _tilted(contour: float) -> np.ndarray:
    weights = np.exp(contour * np.array([-2, -1, 0, 1, 2])) * np.array([1, 2, 1, 2, 1])
    return weights / weights.sum()


def _to_notes(
    starts: np.ndarray, lengths: np.ndarray, midi: np.ndarray, vel: np.ndarray, gate: float, spb: float, sr: int, n: int
) -> _Notes:
    """Beats to samples; drops notes past the clip and leaves room for each release."""
    onsets = np.rint(starts * spb).astype(np.int64)
    keep = onsets < n
    onsets, lengths, midi, vel = onsets[keep], lengths[keep], midi[keep], vel[keep]
    dur_s = lengths * spb / sr
    gate_s = np.minimum(gate * dur_s, np.maximum(dur_s - 0.05, 0.6 * dur_s))
    return _Notes(onsets, np.asarray(midi, np.float64), np.asarray(vel, np.float32), gate_s)


# ----------------------------------------------------------------------------- rendering


def _clock(onsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment lengths and per-sample samples-since-onset, without a per-sample loop."""
    lengths = np.diff(np.append(onsets, n))
    since = np.arange(n, dtype=np.int64) - np.repeat(onsets, lengths)
    return lengths, since


def _envelope(
    notes: _Notes, lengths: np.ndarray, since: np.ndarray, sr: int, attack: float, decay: float, sustain: float
) -> np.ndarray:
    t = since.astype(np.float32) / np.float32(sr)
    gate = np.repeat(notes.gate_s.astype(np.float32), lengths)
    env = np.minimum(t / np.float32(attack), np.float32(1.0))
    env *= np.float32(sustain) + np.float32(1 - sustain) * np.exp(-t / np.float32(decay))
    env *= np.exp(-np.maximum(t - gate, np.float32(0.0)) / np.float32(0.012))
    env *= np.repeat(notes.vel, lengths)
    return env


def _oscillate(freq: np.ndarray, amps: np.ndarray, sr: int) -> np.ndarray:
    """Sum of harmonics k*f with the Chebyshev recurrence: one sin and one cos for all of them."""
    keep = max(1, min(len(amps), int(0.45 * sr / max(float(freq.max()), 1.0))))
    phase = np.mod(np.cumsum(freq * (TWO_PI / sr)), TWO_PI).astype(np.float32)
    cur = np.sin(phase)
    twice_cos = 2.0 * np.cos(phase)
    out = amps[0] * cur
    prev = np.zeros_like(cur)
    for amp in amps[1:keep]:
        nxt = twice_cos * cur
        nxt -= prev
        out += np.float32(amp) * nxt
        prev, cur = cur, nxt
    return out


def _timbre(
    p: MoodProfile, rng: np.random.Generator, extra_bright: float, max_harmonics: int | None = None
) -> np.ndarray:
    """Random harmonic amplitudes around the mood's brightness (odd/even balance varies per instrument)."""
    count = int(rng.integers(p.harmonics[0], p.harmonics[1] + 1))
    if max_harmonics is not None:
        count = min(count, max_harmonics)
    k = np.arange(1, count + 1, dtype=np.float64)
    amps = k ** -(_draw(rng, p.rolloff) / extra_bright) * rng.uniform(0.6, 1.4, size=count)
    amps[1::2] *= rng.uniform(0.3, 1.0)
    return (amps / amps.sum()).astype(np.float32)


def _render(notes: _Notes, amps: np.ndarray, p: MoodProfile, rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    lengths, since = _clock(notes.onsets, n)
    freq = np.repeat(_midi_hz(notes.midi), lengths)
    env = _envelope(notes, lengths, since, sr, _draw(rng, p.attack_s), _draw(rng, p.decay_s), rng.uniform(0.2, 0.6))
    return _oscillate(freq, amps, sr) * env


def _smooth_noise(rng: np.random.Generator, n: int, sr: int, period_s: float) -> np.ndarray:
    """Band-limited random curve in [-1, 1]: random control points joined linearly."""
    step = max(1, int(period_s * sr))
    points = rng.uniform(-1.0, 1.0, size=n // step + 2)
    return np.interp(np.arange(n, dtype=np.float64) / step, np.arange(points.size), points).astype(np.float32)


# ----------------------------------------------------------------------------- instrumental


def _play(p: MoodProfile, n: int, sr: int, rng: np.random.Generator, intensity: float) -> np.ndarray:
    """Chords + melody + bass + drums: the mood lives in mode, tempo, register, timbre and rhythm."""
    bpm = _draw(rng, p.tempo_bpm) * rng.uniform(0.96, 1.04) * intensity**0.15
    spb = 60.0 / bpm * sr
    total_beats = n / spb
    scale = SCALES[p.mode]
    tonic = float(round(_draw(rng, p.register)))  # random key: the melody's tonic, MIDI
    chord_starts, chord_degs = _chords(p, rng, total_beats)
    starts, lengths, degs, chroma = _melody(p, rng, total_beats, chord_starts, chord_degs)
    midi = tonic + _degree_semitones(degs, scale) + chroma
    vel = rng.uniform(0.65, 0.95, size=starts.size) + 0.15 * (np.mod(starts, 1.0) == 0)
    vel = np.where(rng.random(starts.size) < p.rest, 0.0, vel)
    vel[0] = max(vel[0], 0.5)
    melody = _to_notes(starts, lengths, midi, vel, _draw(rng, p.legato), spb, sr, n)
    bright = intensity**0.5
    out = _render(melody, _timbre(p, rng, bright), p, rng, sr, n)
    out += 0.5 * _accompany(p, rng, chord_starts, chord_degs, tonic, scale, spb, sr, n, bright)
    out += _bass(p, rng, chord_starts, chord_degs, tonic, scale, spb, sr, n)
    if p.percussion > 0:
        out += p.percussion * rng.uniform(0.6, 1.2) * _drums(p, rng, spb, sr, n)
    return out


def _chord_midi(
    chord_degs: np.ndarray, tonic: float, scale: tuple[int, ...], rng: np.random.Generator, p: MoodProfile
) -> np.ndarray:
    """Chord tones in MIDI an octave below the melody; dissonant moods add tritones and clusters."""
    midi = tonic - 12 + _degree_semitones(chord_degs, scale).astype(np.float64)
    extra = midi[:, 0] + rng.choice(np.array([6.0, 1.0, 11.0, 13.0]), size=midi.shape[0])
    extra = np.where(rng.random(midi.shape[0]) < p.dissonance, extra, np.nan)
    return np.column_stack([midi, extra])


def _accompany(
    p: MoodProfile, rng: np.random.Generator, chord_starts: np.ndarray, chord_degs: np.ndarray, tonic: float,
    scale: tuple[int, ...], spb: float, sr: int, n: int, bright: float,
) -> np.ndarray:  # fmt: skip
    chords = _chord_midi(chord_degs, tonic, scale, rng, p)
    span = chord_starts[1] - chord_starts[0]
    step = p.comp_beats if p.accompaniment != "pad" else span
    starts = np.arange(0.0, chord_starts[-1] + span, step)
    chord_of = np.minimum((starts // span).astype(np.int64), len(chords) - 1)
    amps = _timbre(p, rng, bright, max_harmonics=6)
    if p.accompaniment == "arp":
        # One voice cycling through the chord tones (skipping an absent dissonant tone).
        pattern = rng.choice([np.array([0, 1, 2, 1]), np.array([0, 1, 2, 3]), np.array([0, 2, 1, 2])])
        tone = pattern[np.arange(starts.size) % pattern.size]
        midi = chords[chord_of, tone]
        midi = np.where(np.isnan(midi), chords[chord_of, 0] + 12, midi)
        vel = rng.uniform(0.6, 0.9, size=starts.size)
        notes = _to_notes(starts, np.full(starts.size, step), midi, vel, 0.95, spb, sr, n)
        return _render(notes, amps, p, rng, sr, n)
    gate = 1.0 if p.accompaniment == "pad" else _draw(rng, p.legato)
    out = np.zeros(n, dtype=np.float32)
    for voice in range(chords.shape[1]):
        midi = chords[chord_of, voice]
        vel = np.where(np.isnan(midi), 0.0, rng.uniform(0.5, 0.8, size=starts.size)) / chords.shape[1]
        notes = _to_notes(starts, np.full(starts.size, step), np.nan_to_num(midi, nan=60.0), vel, gate, spb, sr, n)
        out += _render(notes, amps, p, rng, sr, n)
    return out


def _bass(
    p: MoodProfile, rng: np.random.Generator, chord_starts: np.ndarray, chord_degs: np.ndarray, tonic: float,
    scale: tuple[int, ...], spb: float, sr: int, n: int,
) -> np.ndarray:  # fmt: skip
    span = chord_starts[1] - chord_starts[0]
    step = min(span, max(0.5, p.comp_beats * 2))
    starts = np.arange(0.0, chord_starts[-1] + span, step)
    roots = tonic + _degree_semitones(chord_degs[:, 0], scale)
    midi = roots[np.minimum((starts // span).astype(np.int64), len(roots) - 1)]
    midi = midi - 12 * np.ceil((midi - 48) / 12)  # fold into the bass octave below C3
    vel = rng.uniform(0.5, 0.8, size=starts.size)
    notes = _to_notes(starts, np.full(starts.size, step), midi, vel, _draw(rng, p.legato), spb, sr, n)
    return 0.5 * _render(notes, _timbre(p, rng, 1.0, max_harmonics=4), p, rng, sr, n)


def _hits(onsets: np.ndarray, vel: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample seconds-since-hit clock and level for one drum (silent before its first hit)."""
    keep = (vel > 0) & (onsets < n)
    onsets, vel = onsets[keep], vel[keep]
    if onsets.size == 0 or onsets[0] != 0:
        onsets, vel = np.concatenate([[0], onsets]), np.concatenate([[0.0], vel])
    lengths, since = _clock(onsets, n)
    return since.astype(np.float32), np.repeat(vel.astype(np.float32), lengths)


def _drums(p: MoodProfile, rng: np.random.Generator, spb: float, sr: int, n: int) -> np.ndarray:
    """Kick, snare and hat on a sixteenth grid; hits are decaying noise bursts and a falling sine."""
    slots = np.arange(math.ceil(n / (spb / 4)) + 1)
    onsets = np.rint(slots * spb / 4).astype(np.int64)
    in_bar = slots % 16
    kick_p = np.where(in_bar % 8 == 0, 0.9, np.where(in_bar % 2 == 0, 0.15 * p.hit_density, 0.0))
    snare_p = np.where(np.isin(in_bar, (4, 12)), 0.85 * min(1.0, 2 * p.hit_density), 0.0)
    hat_p = np.where(in_bar % 2 == 0, p.hit_density, 0.3 * p.hit_density * p.hit_density)
    level = rng.uniform(0.6, 1.0, size=(3, slots.size)).astype(np.float32)
    chance = rng.random((3, slots.size))
    sr32 = np.float32(sr)
    t, v = _hits(onsets, np.where(chance[0] < kick_p, level[0], 0.0), n)
    t /= sr32
    tau = np.float32(0.03)
    out = v * np.exp(-t / np.float32(0.18)) * np.sin(TWO_PI * (50.0 * t + 100.0 * tau * (1.0 - np.exp(-t / tau))))
    noise = rng.standard_normal(n, dtype=np.float32)
    t, v = _hits(onsets, np.where(chance[1] < snare_p, level[1], 0.0), n)
    out += 0.35 * v * np.exp(-t / (np.float32(0.045) * sr32)) * noise
    t, v = _hits(onsets, np.where(chance[2] < hat_p, level[2], 0.0), n)
    hiss = np.diff(noise, prepend=np.float32(0.0))  # first difference: a crude high-pass for the hat
    out += 0.1 * v * np.exp(-t / (np.float32(0.02) * sr32)) * hiss
    return out


# ----------------------------------------------------------------------------- sung line


def _sing(
    p: MoodProfile, n: int, sr: int, rng: np.random.Generator, pitch_offset: float, formant_scale: float,
    intensity: float,
) -> np.ndarray:  # fmt: skip
    """One sung phrase (RAVDESS style): glides, vibrato, formant vowels, breath, lead-in silence."""
    bpm = _draw(rng, p.tempo_bpm) * rng.uniform(0.95, 1.05) * intensity**0.1
    spb = 60.0 / bpm * sr
    lead = int(min(rng.uniform(0.15, 0.6) * sr, 0.2 * n))
    tail = int(min(rng.uniform(0.25, 0.6) * sr, 0.15 * n))
    notes = _sung_notes(p, rng, (n - lead - tail) / spb, spb, sr, lead, n, pitch_offset, intensity)
    lengths, since = _clock(notes.onsets, n)
    t_note = since.astype(np.float32) / np.float32(sr)
    f0 = _sung_pitch(p, rng, notes, lengths, t_note, sr, n, intensity)
    attack = max(0.02, _draw(rng, p.attack_s)) / intensity
    env = _envelope(notes, lengths, since, sr, attack, 3.0, 0.8)
    source = _pulse_train(f0, sr) * env
    breath = np.float32(_draw(rng, p.breath))
    sounding = np.repeat(notes.vel > 0, lengths).astype(np.float32)
    consonant = np.float32(1.5) * np.exp(-t_note / np.float32(0.025)) * sounding  # a burst where a syllable starts
    source += breath * (env + consonant) * rng.standard_normal(n, dtype=np.float32)
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    source *= _modulation(p, rng, t, intensity)
    tilt = _draw(rng, p.tilt) / intensity**0.5
    vowels = rng.integers(0, len(VOWELS), size=notes.onsets.size)
    out = _formant_filter(source, notes.onsets, vowels, formant_scale, tilt, sr)
    drive = p.roughness * 6.0 * intensity
    if drive > 0.5:
        out = np.tanh(drive * out / max(float(np.abs(out).max()), 1e-9)).astype(np.float32)
    return out


def _sung_notes(
    p: MoodProfile, rng: np.random.Generator, beats: float, spb: float, sr: int, lead: int, n: int,
    pitch_offset: float, intensity: float,
) -> _Notes:  # fmt: skip
    """Syllables of half to three-quarter beats, a breath after every 7, the last one held to the end."""
    # Sung syllables stay within half to three-quarters of a beat: tempo, not note value, carries the pace.
    note_beats = np.clip(np.asarray(p.note_beats, dtype=np.float64), 0.5, 0.75)
    count = math.ceil(beats / note_beats.min()) + 1
    lengths = rng.choice(note_beats, size=count)
    breaths = (np.arange(count) % 8) == 7
    starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    keep = max(1, int(np.searchsorted(starts, beats - 0.5)))
    starts, lengths, breaths = starts[:keep], lengths[:keep], breaths[:keep]
    lengths[-1] = beats - starts[-1]
    scale = SCALES[p.mode]
    steps = rng.choice(np.array([-2, -1, 0, 1, 2]), size=keep, p=_tilted(p.contour))
    steps = np.where(rng.random(keep) < p.leap, 3 * np.sign(steps + 0.5).astype(np.int64), steps)
    span = p.span * len(scale) / 24.0  # singers keep to about half the instrumental range
    degs = np.rint(_fold(np.cumsum(steps).astype(np.float64) + rng.integers(-1, 2), -span, span)).astype(np.int64)
    chroma = np.where(rng.random(keep) < p.chromatic, rng.choice([-1, 1], size=keep), 0)
    tonic = SINGER_BASE_MIDI + p.voice_register + pitch_offset + 1.5 * (intensity - 1) + rng.integers(-2, 3)
    tonic += rng.uniform(-0.2, 0.2)  # singers drift off concert pitch
    midi = tonic + _degree_semitones(degs, scale) + chroma
    vel = np.where(breaths, 0.0, rng.uniform(0.75, 1.0, size=keep))
    gate = max(0.85, _draw(rng, p.legato))
    notes = _to_notes(starts, lengths, midi, vel, gate, spb, sr, n - lead)
    # Silence before the singer comes in and after the held last note.
    onsets = np.concatenate([[0], notes.onsets + lead, [n - 1]])
    return _Notes(
        onsets,
        np.concatenate([[notes.midi[0]], notes.midi, [notes.midi[-1]]]),
        np.concatenate([[0.0], notes.vel, [0.0]]).astype(np.float32),
        np.concatenate([[0.0], notes.gate_s, [0.0]]),
    )


def _sung_pitch(
    p: MoodProfile, rng: np.random.Generator, notes: _Notes, lengths: np.ndarray, t_note: np.ndarray, sr: int, n: int,
    intensity: float,
) -> np.ndarray:  # fmt: skip
    """f0 per sample: glide from the previous note, delayed vibrato, slow wander."""
    midi = notes.midi.astype(np.float32)
    prev = np.concatenate([midi[:1], midi[:-1]])
    glide = np.float32(_draw(rng, p.glide_s))
    ramp = np.minimum(t_note / glide, np.float32(1.0))
    pitch = np.repeat(prev, lengths) + np.repeat(midi - prev, lengths) * ramp
    depth = np.float32(_draw(rng, p.vibrato_cents) * intensity**0.5 / 100.0)
    rate = _draw(rng, p.vibrato_hz)
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    onset = np.minimum(t_note / np.float32(0.25), np.float32(1.0))  # vibrato grows in after the attack
    pitch += depth * onset * np.sin(np.float32(TWO_PI * rate) * t + np.float32(rng.uniform(0, TWO_PI)))
    pitch += np.float32(p.jitter_cents * intensity / 100.0) * _smooth_noise(rng, n, sr, rng.uniform(0.05, 0.12))
    return (440.0 * np.exp2((pitch - np.float32(69.0)) / np.float32(12.0))).astype(np.float64)


def _pulse_train(f0: np.ndarray, sr: int) -> np.ndarray:
    """Band-limited pulse with flat harmonics (closed-form Dirichlet sum): cost independent of their count."""
    harmonics = max(1, int(min(0.45 * sr, 7000.0) / float(f0.max())))
    theta = np.mod(np.cumsum(f0 * (TWO_PI / sr)), TWO_PI).astype(np.float32)  # float32 after the wrap is plenty
    half = np.sin(np.float32(0.5) * theta)
    small = np.abs(half) < 1e-4
    ratio = np.sin(np.float32(harmonics + 0.5) * theta) / np.where(small, np.float32(1.0), np.float32(2.0) * half)
    pulse = np.where(small, np.float32(harmonics), ratio - np.float32(0.5))
    return pulse * np.float32(1.0 / math.sqrt(harmonics))


def _modulation(p: MoodProfile, rng: np.random.Generator, t: np.ndarray, intensity: float) -> np.ndarray:
    """Amplitude wobble: tremolo (fear) and fast roughness (anger)."""
    gain = np.ones_like(t)
    if p.tremolo > 0:
        depth = np.float32(min(0.9, p.tremolo * intensity**0.5))
        gain *= 1 - depth * (0.5 + 0.5 * np.sin(np.float32(TWO_PI * rng.uniform(5.0, 9.0)) * t))
    if p.roughness > 0:
        depth = np.float32(min(0.9, p.roughness * intensity))
        gain *= 1 - depth * (0.5 + 0.5 * np.sin(np.float32(TWO_PI * rng.uniform(30.0, 70.0)) * t))
    return gain


def _formant_filter(
    x: np.ndarray, onsets: np.ndarray, vowels: np.ndarray, formant_scale: float, tilt: float, sr: int
) -> np.ndarray:
    """Time-varying vowel filter: Hann frames at 50 % overlap, each shaped by its syllable's formants."""
    frame = 1 << max(8, round(math.log2(0.032 * sr)))
    hop = frame // 2
    n = x.size
    count = math.ceil(n / hop) + 1
    padded = np.zeros(hop * (count + 1), dtype=np.float32)
    padded[hop : hop + n] = x
    window = (0.5 - 0.5 * np.cos(TWO_PI * np.arange(frame) / frame)).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop][:count] * window
    freqs = np.fft.rfftfreq(frame, 1.0 / sr)
    syllable = np.clip(np.searchsorted(onsets, np.arange(count) * hop, side="right") - 1, 0, vowels.size - 1)
    formants = VOWELS * formant_scale  # one response per vowel, picked per frame
    offset = (freqs[None, :, None] - formants[:, None, :]) / (0.5 * FORMANT_BW * formant_scale)
    shape = (FORMANT_GAIN / (1.0 + offset**2)).sum(axis=2) + 0.01
    shape *= (1.0 + freqs / 300.0) ** -tilt
    spectra = np.fft.rfft(frames, axis=1)
    spectra *= shape[vowels[syllable]].astype(np.complex64)
    shaped = np.fft.irfft(spectra, n=frame, axis=1).astype(np.float32)
    # With hop = frame/2 the even frames tile the signal, and so do the odd ones: two adds do the overlap-add.
    out = np.zeros_like(padded)
    even, odd = shaped[0::2], shaped[1::2]
    out[: even.shape[0] * frame] += even.ravel()
    out[hop : hop + odd.shape[0] * frame] += odd.ravel()
    return out[hop : hop + n]


# ----------------------------------------------------------------------------- finishing


def _finish(
    x: np.ndarray, p: MoodProfile, sr: int, rng: np.random.Generator, intensity: float, drive_scale: float
) -> np.ndarray:
    """Slow swells, saturation, a random noise floor, fades, and a random peak level."""
    n = x.size
    x = x.astype(np.float32, copy=False)
    if p.swell > 0:
        x *= 1.0 + np.float32(p.swell) * _smooth_noise(rng, n, sr, rng.uniform(0.8, 2.0))
    x /= max(float(np.abs(x).max()), 1e-9)
    drive = _draw(rng, p.drive) * intensity * drive_scale
    if drive > 0.05:
        x = np.tanh(np.float32(drive) * x) / np.float32(math.tanh(drive))
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1.0
    x += np.float32(rms * 10 ** (rng.uniform(-48, -30) / 20)) * rng.standard_normal(n, dtype=np.float32)
    fade = min(int(FADE_S * sr), n // 2)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
        x[:fade] *= ramp
        x[n - fade :] *= ramp[::-1]
    peak = max(float(np.abs(x).max()), 1e-9)
    level = min(0.9, _draw(rng, p.peak) * intensity**0.3)
    out = np.clip(x * np.float32(level / peak), -1.0, 1.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)

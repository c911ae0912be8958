"""Media nodes: Load Audio (any audio or video file, decoded with PyAV) and Video Combine (frames +
audio -> H.264/AAC mp4 with the workflow embedded, ``mimictalk_lib.video``)."""

from __future__ import annotations

from ..mimictalk_lib.errors import InputError
from ..mimictalk_lib.video import AUDIO_MODES
from . import host

io, ui = host.io, host.ui
AUDIO_PLAYER = "AUDIO_UI"
"""The frontend's audio player widget type (core Load Audio's ``audioUI``)."""


class LoadAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = host.input_files(["audio", "video"]) or ["speech.wav"]
        return io.Schema(
            node_id="MimicTalkLoadAudio",
            display_name="MimicTalk Load Audio",
            category="MimicTalk/media",
            description=("Loads the sound track of an audio or video file from the input folder with PyAV (works "
                         "without torchaudio). Upload a file or pick one."),
            inputs=[
                io.Combo.Input("audio", options=files, default=files[0], upload=io.UploadType.audio,
                               tooltip="An audio (wav, mp3, flac, ...) or video file in ComfyUI's input folder."),
                # The web frontend's upload button (added for audio_upload) drives an "audioUI" player
                # widget, which it adds by itself only to the core audio nodes: declaring this input
                # makes it build one here too. Older frontends (1.27) send '' for it in the prompt: ignored.
                io.Custom(AUDIO_PLAYER).Input("audioUI", optional=True, tooltip="Plays the chosen file."),
            ],
            outputs=[io.Audio.Output(display_name="audio", tooltip="The sound: waveform [1, channels, samples] + sample rate.")],
        )

    @classmethod
    def validate_inputs(cls, audio):
        return host.check_input_file("audio file", audio)

    @classmethod
    def fingerprint_inputs(cls, audio, audioUI=None):  # noqa: N803 - the player (see the schema), ignored
        path = host.input_path(audio)
        return (str(path), path.stat().st_size, path.stat().st_mtime_ns) if path is not None else (audio, "missing")

    @classmethod
    def execute(cls, audio, audioUI=None):  # noqa: N803 - the player (see the schema), ignored
        from ..mimictalk_lib.video import read_audio

        path = host.input_path(audio)
        if path is None:
            raise InputError(f"Load Audio: {host.check_input_file('audio file', audio)}")
        sound = read_audio(path)
        if sound is None or sound.num_samples == 0:
            raise InputError(f"'{audio}' has no audio track; pick a file with sound")
        return io.NodeOutput(sound.to_comfy())


class VideoCombine(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..mimictalk_lib.video import DEFAULT_CRF

        return io.Schema(
            node_id="MimicTalkVideoCombine",
            display_name="MimicTalk Video Combine",
            category="MimicTalk/media",
            description=("Writes frames and (optional) audio into one mp4 (H.264 + AAC, through PyAV: no ffmpeg "
                         "install needed) in the output folder, with the prompt and workflow embedded like core Save "
                         "Video. The audio is trimmed or padded to the video. Also outputs a core VIDEO."),
            inputs=[
                io.Image.Input("images", tooltip="The frames (e.g. from Render)."),
                io.Float.Input("fps", default=25.0, min=1.0, max=120.0, step=0.01, tooltip="Frame rate (Render outputs 25)."),
                io.String.Input("filename_prefix", default="MimicTalk/talk",
                                tooltip="Output file name prefix; '/' makes subfolders of the output folder."),
                io.Int.Input("crf", default=DEFAULT_CRF, min=0, max=51,
                             tooltip="H.264 quality: lower is better and larger (19 is visually near-lossless)."),
                io.Combo.Input("audio_fit", options=list(AUDIO_MODES), default="fit",
                               tooltip="fit: trim or pad the audio with silence to the video; trim / pad: only that; "
                                       "keep: write it unchanged."),
                io.Audio.Input("audio", optional=True, tooltip="The sound track (e.g. the speech that drove the motion)."),
            ],
            outputs=[io.Video.Output(display_name="video", tooltip="The saved video (for core Save Video and other nodes).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, fps, filename_prefix, crf, audio_fit, audio=None):
        from ..mimictalk_lib.video import write_video

        height, width = int(images.shape[1]), int(images.shape[2])
        folder, stem, counter, subfolder = host.save_path(filename_prefix, width, height)
        name = f"{stem}_{counter:05}_.mp4"
        metadata = None
        if host.metadata_enabled():  # what core SaveVideo embeds: extra_pnginfo (the workflow) and the prompt
            metadata = dict(cls.hidden.extra_pnginfo or {})
            if cls.hidden.prompt is not None:
                metadata["prompt"] = cls.hidden.prompt
        written = write_video(folder / name, images, fps, audio=audio, audio_mode=audio_fit, crf=crf,
                              metadata=metadata or None, on_step=host.progress(images.shape[0]))
        return io.NodeOutput(host.video_from_file(written.path),
                             ui=ui.PreviewVideo([ui.SavedResult(name, subfolder, io.FolderType.output)]))


NODES = [LoadAudio, VideoCombine]

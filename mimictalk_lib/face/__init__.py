"""Face model and renderer conditioning: BFM-2009 3DMM, mesh, landmarks, SECC maps, EG3D camera,
torso keypoints and blinks (architecture reference §1.5, §1.6, §5). Pure torch + numpy/scipy.

Coefficients everywhere (``coeffs``): ``Coefficients(id, exp, euler, trans)`` with identity ``id``
[..., 1 or T, 80], expression ``exp`` [..., T, 64], ``euler`` [..., T, 3] (radians, BFM convention)
and ``trans`` [..., T, 3]; its ``pose`` is a ``HeadPose(euler, trans)``. Both index by frame
(``c[i]``, ``c[a:b]``, ``c[idx]``), move with ``.to(device)`` and map with ``.map(fn)``;
``c.per_frame()`` repeats a shared identity for every frame (what the projections need).

Face-model folder (``files``)
    ``check_face_model_files(folder, *, need_mp468=False) -> FaceModelFiles``
        Raises ``FaceModelMissingError`` listing every missing file, its purpose, its origin
        (Basel registration page and licence, Deep3DFaceRecon / Guo et al., the upstream authors'
        BFM folder) and the folder it goes in. Accepted layouts: ``BFM_model_front.mat``, or the six
        Basel/Deep3DFaceRecon source files (converted once, the result saved as
        ``BFM_model_front.mat``). ``index_mp468_from_mesh35709.npy`` is needed only for fitting.
        ``ncc_code.npy`` / ``bfm_{left,right}_eye_faces.npy`` (upstream MIT repo) are optional.

Face model (``model``)
    ``load_face_model(folder, *, need_mp468=False) -> FaceModel``: CPU float32 ``nn.Module`` of
    non-persistent buffers; ``.to(device, dtype)`` moves it. Raises ``FaceModelMissingError`` /
    ``CheckpointError``.
    ``FaceModel.shape(id, exp) -> [..., N, 3]``: canonical (unposed, re-centred) mesh, decimetres.
    ``FaceModel.points(id, exp, index [K]) -> [..., K, 3]``: selected vertices only (cheap).
    ``FaceModel.landmarks(id, exp, which="lm68_upstream") -> [..., K, 3]``: ``which`` is ``"lm68"``
    (keypoints - 1, the correct 68 points), ``"lm68_upstream"`` (what upstream's Face3DHelper uses
    for torso keypoints and lip crops: keypoints read without the - 1, i.e. the next vertex) or
    ``"mp468"`` (MediaPipe map; unmatched entries -> vertex 0, see ``FaceModel.mp468_matched``).
    ``FaceModel.project_landmarks(coeffs, which) -> [..., K, 2]``: pixels of the
    224 x 224 fitting image with v pointing up (what the landmark fitting compares with MediaPipe
    points flipped as ``224 - y``).
    ``euler_to_rotation(euler) -> [..., 3, 3]``: R = (Rz Ry Rx)^T, applied as ``points @ R``.
    ``to_camera(points [..., K, 3], pose, camera_distance=10) -> [..., K, 3]``.
    ``project(points_cam, focal=1015, center=112) -> [..., K, 2]``.
    Buffers: ``mean_shape`` [N, 3], ``id_base`` [3N, 80], ``exp_base`` [3N, 64], ``tri`` [F, 3],
    ``secc_tri`` (eye holes removed), ``eye_faces``, ``ncc`` [N, 3], ``lm68``, ``lm68_upstream``,
    ``mp468``, ``mp468_matched``.

SECC maps (``secc``)
    ``render_secc(face_model, id, exp, *, size=512, dtype=None, chunk_size=16, on_step=None)
    -> [B, 3, size, size]`` in [-1, 1], background exactly -1; zero pose, eye holes, NCC colours.
    ``secc_maps(face_model, id, exp [T, 64], *, src_exp=None, ...) -> SeccMaps(cano, src, drv)``.
    Rasteriser (``raster``): ``rasterize(verts_screen [B, V, 3], faces, H, W) -> Fragments``,
    ``render_vertex_colors(...)``, ``interpolate(...)``, ``ndc_to_screen(...)``: pure torch,
    z-buffered, watertight, perspective-correct, pytorch3d's default settings.

Camera (``camera``)
    ``eg3d_camera(pose [T]) -> [T, 25]`` (c2w 16 + normalised K 9).
    ``smooth_camera(camera [T, 25], kernel_size=7) -> [T, 25]``; ``camera_sequence(pose)``
    = smoothed cameras. ``driving_pose(pose, n_frames, *, source=None, map_to_init_pose=True,
    freeze_z=True) -> HeadPose``; ``mirror_indices(n_frames, n_poses)``.

Torso keypoints (``keypoints``)
    ``torso_keypoints(face_model, coeffs, *, clamp=True) -> [..., 68, 3]`` in
    [-1, 1] with z = 0; ``select_torso_keypoints(kp, num=4)`` ([0, 8, 16, 27]; 9 points also);
    ``smooth_keypoints(kp [T, ...], kernel_size=7)``; ``landmarks_2d(...) -> [..., K, 2]`` in [0, 1]
    image coordinates (y down; times 512 for the lip crop of the adaptation).

Blink (``blink``)
    ``blink_schedule(n_frames, mode="period" | "none", generator=None) -> [T]`` closure in [0, 1].
    ``apply_blink(secc [T, 3, H, W], closure [T]) -> [T, 3, H, W]``.

Derived assets (``assets``)
    NCC colours: upstream's ``ncc_code.npy`` when present, else per-axis min-max of the mean shape
    over the front vertices (the shipped file has per-axis min 0 and max 1 exactly, as this rule
    gives). Eye holes: upstream's lists when present, else triangles inside the 68-point eye
    contours (an approximation). The 68-point map is the model's ``keypoints`` field; the MediaPipe
    map is a required file for fitting (it cannot be derived from the model).
"""

from .blink import apply_blink, blink_schedule
from .coeffs import Coefficients, HeadPose
from .camera import camera_sequence, driving_pose, eg3d_camera, mirror_indices, smooth_camera
from .files import FaceModelFiles, check_face_model_files
from .keypoints import landmarks_2d, select_torso_keypoints, smooth_keypoints, torso_keypoints
from .model import FaceModel, euler_to_rotation, load_face_model, project, to_camera
from .secc import SeccMaps, render_secc, secc_maps

__all__ = [
    "Coefficients",
    "FaceModel",
    "FaceModelFiles",
    "HeadPose",
    "SeccMaps",
    "apply_blink",
    "blink_schedule",
    "camera_sequence",
    "check_face_model_files",
    "driving_pose",
    "eg3d_camera",
    "euler_to_rotation",
    "landmarks_2d",
    "load_face_model",
    "mirror_indices",
    "project",
    "render_secc",
    "secc_maps",
    "select_torso_keypoints",
    "smooth_camera",
    "smooth_keypoints",
    "to_camera",
    "torso_keypoints",
]
